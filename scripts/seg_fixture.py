#!/usr/bin/env python3
"""The segmentation-mask decoder of PaliGemma, written from big_vision's definition
(big_vision/evaluators/proj/paligemma/transfers/segmentation.py: `Decoder`, `ResBlock`,
`get_reconstruct_masks`) in PyTorch, with random weights saved in the published `vae-oid.npz`
layout (a PyTorch state dict: `_vq_vae._embedding` [128, 512], `decoder.{0,2,3,4,6,8,10,12}.*`),
and what it computes for chosen code sequences.

    python3 scripts/seg_fixture.py [--out tests/fixtures/seg]

Writes vae.npz (the weights) and expected.npz:
    codes [3, 16] int32            the code sequences (`<seg>` numbers in answer order)
    masks [3, 64, 64] float32      the decoder's output (> 0 = inside), row-major
    box [4] int32                  a box in image pixels: y0, x0, y1, x1 (end exclusive)
    image_size [2] int32           height, width of the image the box lives in
    in_box [y1-y0, x1-x0] float32  masks[0] resized into the box as big_vision's evaluator does
                                   (PIL mode F, BILINEAR), before the > 0 threshold

The decoder, NHWC in big_vision, NCHW here: codes -> codebook rows -> [4, 4, 512];
conv1x1 512->128, ReLU; two ResBlocks (x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))); four
ConvTranspose(k=4, s=2, p=1) + ReLU: 128->128->64->32->16, 4 -> 64 pixels; conv1x1 16->1.
big_vision's conv_transpose(padding=2, transpose_kernel=True) is PyTorch's
ConvTranspose2d(4, 2, padding=1).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK, EMBED = 128, 512


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.net(x)


def decoder():
    return nn.Sequential(
        nn.Conv2d(EMBED, 128, 1), nn.ReLU(),
        ResBlock(128), ResBlock(128),
        nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(16, 1, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "seg"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    dec = decoder().eval()
    # Trained decoders give masks of both signs; random ones hover near the last bias. Spread
    # the output so that the threshold at 0 cuts through every mask.
    embedding = torch.randn(CODEBOOK, EMBED) * 0.5
    codes = np.array([list(range(16)), [127 - i * 5 for i in range(16)], [3, 3, 90, 12] * 4],
                     dtype=np.int32)

    def run():
        with torch.no_grad():
            x = embedding[torch.from_numpy(codes).long().reshape(-1)].reshape(3, 4, 4, EMBED)
            return dec(x.permute(0, 3, 1, 2))[:, 0].numpy().astype(np.float32)

    with torch.no_grad():
        dec[12].weight.mul_(40.0)
        dec[12].bias.zero_()
        dec[12].bias.fill_(-float(np.median(run())))
    state = {"_vq_vae._embedding": embedding}
    state.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
    np.savez(out / "vae.npz", **{k: v.numpy().astype(np.float32) for k, v in state.items()})

    masks = run()
    image_h, image_w = 150, 200
    y0, x0, y1, x1 = 20, 35, 131, 172  # a box larger than 64 one way, smaller the other
    in_box = np.asarray(Image.fromarray(masks[0], mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR),
                        dtype=np.float32)
    np.savez(out / "expected.npz", codes=codes, masks=masks, box=np.array([y0, x0, y1, x1], np.int32),
             image_size=np.array([image_h, image_w], np.int32), in_box=in_box)
    inside = [(m > 0).mean() for m in masks]
    print(f"wrote {out}/vae.npz and expected.npz; inside fractions {np.round(inside, 3)}")


if __name__ == "__main__":
    main()

//! The segmentation path against the Python reference (`scripts/seg_fixture.py`: big_vision's
//! decoder in PyTorch with random weights in the `vae-oid.npz` layout, and Pillow's resize):
//! the GPU decoder and the CPU one, the mask fitted into its box, and the whole way from an
//! answer's text to mask pixels.

mod common;

use common::{assert_close, fixture_path, gpu};
use paligemma::detection::parse_answer;
use paligemma::segmentation::{Mask, SegDecoder, SegWeights, decode_ref};

struct Expected {
    codes: Vec<[u32; 16]>,
    masks: Vec<Vec<f32>>,
    /// y0, x0, y1, x1 in pixels, and the image's height and width.
    bounds: [u32; 4],
    image: (u32, u32),
    in_box: Vec<f32>,
}

fn expected() -> Expected {
    let mut npz = npyz::npz::NpzArchive::open(fixture_path("seg/expected.npz")).unwrap();
    let mut ints =
        |name: &str| -> Vec<i32> { npz.by_name(name).unwrap().unwrap().into_vec().unwrap() };
    let codes: Vec<[u32; 16]> = ints("codes")
        .chunks(16)
        .map(|c| std::array::from_fn(|i| c[i] as u32))
        .collect();
    let b = ints("box");
    let size = ints("image_size");
    let mut floats =
        |name: &str| -> Vec<f32> { npz.by_name(name).unwrap().unwrap().into_vec().unwrap() };
    let masks = floats("masks")
        .chunks(64 * 64)
        .map(<[f32]>::to_vec)
        .collect();
    Expected {
        codes,
        masks,
        bounds: [b[0] as u32, b[1] as u32, b[2] as u32, b[3] as u32],
        image: (size[0] as u32, size[1] as u32),
        in_box: floats("in_box"),
    }
}

#[test]
fn the_decoder_matches_big_vision_on_the_gpu_and_the_cpu() {
    let e = expected();
    let path = fixture_path("seg/vae.npz");
    let decoder = SegDecoder::load(gpu(), &path).unwrap();
    let weights = SegWeights::open(&path).unwrap();
    assert_eq!(weights.embed_dim().unwrap(), 512);
    for (codes, want) in e.codes.iter().zip(&e.masks) {
        let err = assert_close(
            &format!("GPU mask {codes:?}"),
            &decoder.decode(codes).unwrap(),
            want,
            1e-4,
        );
        let cpu = decode_ref(&weights, codes).unwrap();
        let cpu_err = assert_close(&format!("CPU mask {codes:?}"), &cpu, want, 1e-4);
        eprintln!("mask {codes:?}: GPU {err:.2e}, CPU {cpu_err:.2e} of max |ref|");
    }
    // Codes outside the codebook are an error, not a read out of bounds.
    let mut bad = e.codes[0];
    bad[3] = 128;
    assert!(
        decoder
            .decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("128")
    );
}

#[test]
fn a_mask_fits_its_box_as_pillow_resizes_it() {
    let e = expected();
    let [y0, x0, y1, x1] = e.bounds;
    let m = Mask::in_box(&e.masks[0], (y0 as f32, x0 as f32, y1 as f32, x1 as f32)).unwrap();
    assert_eq!((m.x, m.y, m.width, m.height), (x0, y0, x1 - x0, y1 - y0));
    let soft = paligemma::preprocess::resize_bilinear_f32(
        &e.masks[0],
        (64, 64),
        (m.width as usize, m.height as usize),
    );
    let err = assert_close("bilinear resize into the box", &soft, &e.in_box, 1e-5);
    eprintln!("resize into the box: {err:.2e} of max |ref|");
    // Thresholded at 0 exactly where Pillow's values are clearly signed.
    let flips = m
        .inside
        .iter()
        .zip(&e.in_box)
        .filter(|(inside, v)| v.abs() > 1e-6 && **inside != (**v > 0.0))
        .count();
    assert_eq!(flips, 0);
    let area = m.area();
    assert!(
        area > 0 && area < m.inside.len(),
        "a mask of both signs: {area}"
    );
    let rle = m.rle();
    assert_eq!(rle.iter().sum::<u32>() as usize, m.inside.len());
    assert!(
        Mask::in_box(&e.masks[0], (5.0, 5.0, 5.0, 9.0)).is_none(),
        "an empty box"
    );
}

#[test]
fn from_answer_text_to_mask_pixels() {
    let e = expected();
    let (height, width) = e.image;
    // Locations whose pixels (/1024, truncated) are the fixture's box, then the first codes.
    let segs: String = e.codes[0].iter().map(|c| format!("<seg{c:03}>")).collect();
    let text = format!(
        "<loc0137><loc0180><loc0895><loc0881>{segs} cat ; <loc0010><loc0010><loc0500><loc0500> dog"
    );
    let answer = parse_answer(&text, width, height);
    assert_eq!((answer.detections.len(), answer.skipped), (2, 0));
    let cat = &answer.detections[0];
    assert_eq!(cat.codes, Some(e.codes[0]));
    assert!(answer.detections[1].codes.is_none(), "a box without a mask");
    let decoder = SegDecoder::load(gpu(), &fixture_path("seg/vae.npz")).unwrap();
    let mask = Mask::in_box(&decoder.decode(&cat.codes.unwrap()).unwrap(), cat.bounds()).unwrap();
    let [y0, x0, y1, x1] = e.bounds;
    assert_eq!(
        (mask.x, mask.y, mask.width, mask.height),
        (x0, y0, x1 - x0, y1 - y0)
    );
    let differ = mask
        .inside
        .iter()
        .zip(&e.in_box)
        .filter(|(inside, v)| v.abs() > 1e-4 && **inside != (**v > 0.0))
        .count();
    assert_eq!(differ, 0, "mask pixels against Pillow's");
}

#[test]
fn a_missing_or_broken_decoder_file_is_an_error_naming_it() {
    let e = SegDecoder::load(gpu(), "/nonexistent/vae-oid.npz".as_ref())
        .err()
        .unwrap();
    assert!(e.to_string().contains("vae-oid.npz"), "{e}");
    let e = SegDecoder::load(gpu(), &fixture_path("seg/expected.npz"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("_vq_vae._embedding"), "{e}");
}

#[cfg(feature = "draw")]
#[test]
fn an_answer_is_drawn_with_its_box_label_and_mask() {
    use paligemma::draw::{MASK_ALPHA, colours, draw};
    let e = expected();
    let (height, width) = e.image;
    let segs: String = e.codes[0].iter().map(|c| format!("<seg{c:03}>")).collect();
    let text = format!("<loc0137><loc0180><loc0895><loc0881>{segs} cat");
    let answer = parse_answer(&text, width, height);
    let decoder = SegDecoder::load(gpu(), &fixture_path("seg/vae.npz")).unwrap();
    let d = &answer.detections[0];
    let mask = Mask::in_box(&decoder.decode(&d.codes.unwrap()).unwrap(), d.bounds()).unwrap();
    let grey = image::Rgb([100u8, 100, 100]);
    let mut picture = image::RgbImage::from_pixel(width, height, grey);
    draw(&mut picture, &answer.detections, &[Some(mask.clone())]);
    let c = colours(&answer.detections)[0];
    let blend =
        |v: u8, c: u8| (v as f32 * (1.0 - MASK_ALPHA) + c as f32 * MASK_ALPHA).round() as u8;
    let masked = image::Rgb([blend(100, c[0]), blend(100, c[1]), blend(100, c[2])]);
    // Inside the box, away from its stroke: blended where the mask is, untouched elsewhere.
    let mut checked = 0;
    for (i, &inside) in mask.inside.iter().enumerate() {
        let (x, y) = (
            mask.x + i as u32 % mask.width,
            mask.y + i as u32 / mask.width,
        );
        if x < mask.x + 3
            || y < mask.y + 3
            || x + 3 >= mask.x + mask.width
            || y + 3 >= mask.y + mask.height
        {
            continue;
        }
        let want = if inside { masked } else { grey };
        assert_eq!(*picture.get_pixel(x, y), want, "pixel ({x}, {y})");
        checked += 1;
    }
    assert!(checked > 10_000, "{checked}");
    // The box's left edge in the label's colour, outside the box untouched, the label's tab
    // above the box in the colour with white glyphs on it.
    assert_eq!(*picture.get_pixel(mask.x, mask.y + 60), image::Rgb(c));
    assert_eq!(*picture.get_pixel(5, 5), grey);
    let tab: Vec<image::Rgb<u8>> = (mask.x..mask.x + 30)
        .map(|x| *picture.get_pixel(x, mask.y - 8))
        .collect();
    assert!(
        tab.contains(&image::Rgb(c)) && tab.contains(&image::Rgb([255, 255, 255])),
        "{tab:?}"
    );
    // PNG round trip, as `--draw` writes it.
    let path = std::env::temp_dir().join(format!("paligemma-draw-{}.png", std::process::id()));
    picture.save(&path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), picture);
    let _ = std::fs::remove_file(path);
}

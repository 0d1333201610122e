"""Which wgpu adapter is the GPU a Ray worker was given.

Ray gives each actor GPUs by setting ``CUDA_VISIBLE_DEVICES`` and reporting them through
``ray.get_gpu_ids()``. Those ids are physical indices in NVIDIA's NVML order (PCI bus order:
the order of ``nvidia-smi``). Vulkan, Metal and DX12 ignore ``CUDA_VISIBLE_DEVICES``: wgpu sees
every GPU of the machine, so adapter 0 would be the same GPU for every actor. The mapping:
take one backend's GPUs (Vulkan first, as on Linux; then Metal, DX12, GL), sort them by PCI bus
id when the driver reports it (NVIDIA, AMD and Intel Vulkan drivers do, through
``VK_EXT_pci_bus_info``), and take the one at Ray's index. Where the bus ids are unknown the
enumeration order is kept, which on a machine of identical GPUs is the driver's order.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _native

_BACKEND_PREFERENCE = ("vulkan", "metal", "dx12", "gl")
_GPU_TYPES = ("DiscreteGpu", "IntegratedGpu", "VirtualGpu")


def adapter_for_gpu(
    gpu_id: Union[int, str], adapters: Optional[Sequence[Dict[str, Any]]] = None
) -> int:
    """The index (in :func:`paligemma_wgpu.list_adapters`) of the GPU at position ``gpu_id``
    of the machine's GPUs in PCI bus order, which is what Ray's and ``nvidia-smi``'s GPU ids
    count. ``adapters`` defaults to :func:`list_adapters`' (tests pass their own)."""
    try:
        position = int(gpu_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"gpu_id: expected an index such as 0 or '1', got {gpu_id!r} (GPU UUIDs are not "
            "supported: start Ray without CUDA_VISIBLE_DEVICES set to UUIDs)"
        ) from None
    if position < 0:
        raise ValueError(f"gpu_id: must be >= 0, got {position}")
    if adapters is None:
        adapters = json.loads(_native.list_adapters())
    gpus = _one_backend(adapters)
    if position >= len(gpus):
        names = [a["name"] for a in gpus]
        raise ValueError(
            f"gpu_id {position}: wgpu finds {len(gpus)} GPUs {names} (is a Vulkan driver "
            "installed for every GPU?)"
        )
    return int(gpus[position]["index"])


def ray_adapter(
    gpu_ids: Optional[Sequence[Union[int, str]]] = None,
    adapters: Optional[Sequence[Dict[str, Any]]] = None,
) -> Optional[int]:
    """The adapter index for the GPU Ray assigned to this worker (``ray.get_gpu_ids()``
    unless ``gpu_ids`` is given), for ``PaliGemma(..., adapter=...)``; ``None`` when the
    worker has no GPU (the model then takes the machine's default adapter). A model runs on
    one GPU: with several ids, the first is taken."""
    if gpu_ids is None:
        import ray

        gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        return None
    return adapter_for_gpu(gpu_ids[0], adapters)


def _one_backend(adapters: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The GPUs (no CPU rasterisers) of the most preferred backend that has any, in PCI bus
    order when every one reports its bus id."""
    gpus = [a for a in adapters if a.get("device_type") in _GPU_TYPES]
    for backend in _BACKEND_PREFERENCE:
        chosen = [a for a in gpus if str(a.get("backend", "")).lower() == backend]
        if chosen:
            if all(a.get("pci_bus_id") for a in chosen):
                chosen.sort(key=lambda a: a["pci_bus_id"].lower())
            return chosen
    return []

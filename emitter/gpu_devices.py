"""Which GPUs a process samples: CUDA_VISIBLE_DEVICES (ordinals, UUIDs, MIG devices) mapped to
NVML handles in PCI bus order, then this local rank's GPU (pure over the NVML module given)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("runwire.gpu")

# Values of CUDA_VISIBLE_DEVICES that hide every GPU (SLURM writes NoDevFiles when a job got no
# GPU; -1 is the common idiom).
_NO_DEVICES = {"", "-1", "nodevfiles"}


def nvml_text(v: Any) -> str:
    # pynvml returns str for most strings but bytes from some struct fields and older bindings.
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def pci_bus_id_of(nvml: Any, handle: Any) -> str:
    info = nvml.nvmlDeviceGetPciInfo(handle)
    bus_id = nvml_text(getattr(info, "busId", b"") or getattr(info, "busIdLegacy", b""))
    return bus_id.upper()


def select_devices(
    nvml: Any,
    cuda_visible_devices: str | None,
    local_rank: int | None,
    sample_all: bool,
) -> list[Any]:
    """Return the NVML handles of the GPUs this process should sample (NVML must be initialised).

    ``nvml`` is the ``pynvml`` module (or a fake with the same surface).

    - ``sample_all``: every GPU of the machine, in NVML index order.
    - Otherwise the GPUs visible to CUDA. ``cuda_visible_devices`` is the value of
      ``CUDA_VISIBLE_DEVICES`` (None = unset = all GPUs visible). Entries may be CUDA ordinals
      ("0,1"), full GPU UUIDs, unique UUID prefixes ("GPU-8a3c"), or MIG UUIDs (mapped to the
      parent GPU when NVML can tell which; skipped with one log line otherwise). "", "-1" and
      "NoDevFiles" mean no GPU. As CUDA does, parsing stops at the first invalid entry.
    - CUDA ordinals are mapped to GPUs in PCI bus id order: CUDA numbers GPUs in that order when
      ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and its default FASTEST_FIRST order is the same on the
      homogeneous nodes training runs on. NVML's index order is usually, but not always, PCI
      order, so we sort explicitly instead of trusting NVML indexes.
    - Then, if ``local_rank`` is set and more than one GPU is visible, only the visible GPU at
      position ``local_rank`` (a rank uses ``cuda:<local_rank>`` by convention), so eight ranks
      on a node do not sample every GPU eight times; a local rank beyond the visible GPUs
      samples none (its GPU is some other rank's). One visible GPU is sampled whatever the rank.
    """
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    if sample_all:
        return handles

    if cuda_visible_devices is None:
        visible = [handles[i] for i in _pci_positions(nvml, handles)]
    else:
        visible = _parse_visible(nvml, handles, cuda_visible_devices)

    if local_rank is None or len(visible) <= 1:
        return visible
    if 0 <= local_rank < len(visible):
        return [visible[local_rank]]
    log.info("runwire.gpu: local rank %d has no GPU among the %d visible; not sampling GPUs",
             local_rank, len(visible))
    return []


def _pci_positions(nvml: Any, handles: list[Any]) -> list[int]:
    """NVML positions of ``handles`` sorted by PCI bus id (the CUDA ordinal order)."""
    keyed = []
    for i, h in enumerate(handles):
        try:
            key = pci_bus_id_of(nvml, h)
        except nvml.NVMLError:
            key = "~%08d" % i  # unknown bus id: keep NVML order, after the known ones
        keyed.append((key, i))
    keyed.sort()
    return [i for _, i in keyed]


def _parse_visible(nvml: Any, handles: list[Any], value: str) -> list[Any]:
    value = value.strip()
    if value.lower() in _NO_DEVICES:
        return []
    pci_sorted = None
    uuids: list[str] | None = None
    chosen: list[Any] = []
    chosen_ids: set[int] = set()

    def add(pos: int) -> None:
        if pos not in chosen_ids:  # CUDA rejects duplicates; we just ignore them
            chosen_ids.add(pos)
            chosen.append(handles[pos])

    for raw in value.split(","):
        tok = raw.strip()
        if not tok:
            _stop(value, raw)
            break
        if tok.lstrip("-").isdigit():
            n = int(tok)
            if pci_sorted is None:
                pci_sorted = _pci_positions(nvml, handles)
            if not 0 <= n < len(pci_sorted):
                _stop(value, tok)
                break
            add(pci_sorted[n])
            continue
        if uuids is None:
            uuids = [nvml_text(nvml.nvmlDeviceGetUUID(h)).lower() for h in handles]
        low = tok.lower()
        if low.startswith("mig-"):
            pos = _mig_parent(nvml, handles, uuids, low)
            if pos is None:
                log.info("runwire.gpu: CUDA_VISIBLE_DEVICES entry %r: MIG device whose parent GPU "
                         "NVML cannot identify; skipped", tok)
                continue
            add(pos)
            continue
        matches = [i for i, u in enumerate(uuids) if u.startswith(low)]
        if len(matches) != 1:
            _stop(value, tok, ambiguous=len(matches) > 1)
            break
        add(matches[0])
    return chosen


def _stop(value: str, tok: str, ambiguous: bool = False) -> None:
    why = "matches several GPUs" if ambiguous else "matches no GPU"
    log.info("runwire.gpu: CUDA_VISIBLE_DEVICES=%r: entry %r %s; CUDA ignores it and every "
             "entry after it", value, tok, why)


def _mig_parent(nvml: Any, handles: list[Any], uuids: list[str], mig: str) -> int | None:
    # Pre-R470 drivers name MIG devices MIG-GPU-<parent uuid>/<gi>/<ci>.
    if mig.startswith("mig-gpu-"):
        parent = mig[4:].split("/", 1)[0]
        for i, u in enumerate(uuids):
            if u == parent:
                return i
        return None
    NVMLError = nvml.NVMLError
    for i, h in enumerate(handles):
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(h)
            if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
                continue
            n = nvml.nvmlDeviceGetMaxMigDeviceCount(h)
        except (NVMLError, AttributeError):
            continue
        for j in range(n):
            try:
                mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                mu = nvml_text(nvml.nvmlDeviceGetUUID(mh)).lower()
            except NVMLError:
                continue
            if mu.startswith(mig):
                return i
    return None

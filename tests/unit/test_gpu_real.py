"""The real sampler against the real NVML: runs where an NVIDIA GPU is present, skipped elsewhere."""

from __future__ import annotations

import math
import queue

import pytest

from runwire.gpu import GpuSampler
from runwire.gpu_wire import encode_gpu_batch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(60)]


def _gpu_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


@pytest.fixture(scope="module")
def n_gpus():
    n = _gpu_count()
    if n == 0:
        pytest.skip("no NVIDIA GPU")
    return n


def test_real_sampler_reads_sane_values(n_gpus):
    q: queue.Queue = queue.Queue()
    s = GpuSampler(q.put, interval_s=0.1, sample_all=True)
    assert s.start()
    try:
        batches = [q.get(timeout=10) for _ in range(3)]
    finally:
        s.shutdown()
    st = s.stats()
    assert st["samples"] >= 3 * n_gpus
    print(f"real NVML: {st['mean_s_per_sample_per_gpu'] * 1e6:.1f} us per sample per GPU, "
          f"fields off: {st['fields_off']}")
    for batch in batches:
        assert len(batch) == n_gpus
        assert len({x.gpu_uuid for x in batch}) == n_gpus
        for x in batch:
            assert x.gpu_uuid.startswith("GPU-")
            assert x.pci_bus_id and x.gpu_name
            assert 0 <= x.temperature_c <= 120
            assert 0 <= x.memory_used_bytes <= x.memory_total_bytes
            assert x.memory_total_bytes > 0
            assert 0 <= x.gpu_utilization_pct <= 100
            assert math.isnan(x.power_w) or 0 < x.power_w <= 2000
            assert math.isnan(x.power_limit_w) or 0 < x.power_limit_w <= 2000
            assert math.isnan(x.sm_clock_mhz) or 0 < x.sm_clock_mhz < 5000
            assert math.isnan(x.memory_temperature_c) or 0 <= x.memory_temperature_c <= 130
            assert x.throttle_reasons >= 0 and x.xid >= 0
    assert len(encode_gpu_batch(batches[-1]).gpu_uuids) == n_gpus


def test_real_sampler_for_one_local_rank(n_gpus):
    s = GpuSampler(lambda b: None, interval_s=0.1, local_rank=0, cuda_visible_devices=None)
    assert s.start(run_thread=False)
    try:
        samples = s.sample_once()
    finally:
        s.shutdown()
    assert len(samples) == 1 and samples[0].gpu_uuid.startswith("GPU-")

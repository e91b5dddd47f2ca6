"""NVML GPU sampler (runwire.gpu) against the faithful fake (runwire.simulated_nvml)."""

from __future__ import annotations

import inspect
import logging
import math
import os
import queue
import sys
import threading
import time

import pynvml
import pytest

from runwire.gpu import GpuSampler
from runwire.gpu_devices import select_devices
from runwire.gpu_wire import GpuSample, decode_gpu_batch, encode_gpu_batch
from runwire.proto import telemetry_pb2
from runwire.simulated_nvml import FakeGpu, FakeNvml, ManualClock

pytestmark = pytest.mark.timeout(30)

GIB = 2 ** 30
MIB = 2 ** 20


def records(caplog):
    return [r for r in caplog.records if r.name == "runwire.gpu"]


def sampler_threads():
    return [t for t in threading.enumerate() if t.name == "runwire-gpu-sampler"]


def started(nvml, **kw):
    kw.setdefault("cuda_visible_devices", None)
    s = GpuSampler(lambda batch: None, nvml=nvml, **kw)
    assert s.start(run_thread=False)
    return s


def by_uuid(samples):
    return {s.gpu_uuid: s for s in samples}


# --------------------------------------------------------------------------------------------
# the fake is faithful to pynvml

USED_FUNCTIONS = [
    "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
    "nvmlDeviceGetPciInfo", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors", "nvmlEventSetCreate", "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait", "nvmlEventSetFree", "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", "nvmlDeviceIsMigDeviceHandle",
]


@pytest.mark.parametrize("name", USED_FUNCTIONS)
def test_fake_has_pynvml_signature(name):
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNvml(), name))
    assert list(fake.parameters) == list(real.parameters)


def test_fake_constants_and_exceptions_are_pynvml_own():
    nv = FakeNvml()
    for name in ("NVML_TEMPERATURE_GPU", "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_VOLATILE_ECC",
                 "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED",
                 "NVML_FI_DEV_MEMORY_TEMP", "nvmlEventTypeXidCriticalError",
                 "nvmlClocksEventReasonHwThermalSlowdown"):
        assert getattr(nv, name) == getattr(pynvml, name)
    for name in ("NVMLError", "NVMLError_NotSupported", "NVMLError_LibraryNotFound",
                 "NVMLError_DriverNotLoaded", "NVMLError_Uninitialized", "NVMLError_Timeout"):
        assert getattr(nv, name) is getattr(pynvml, name)


def test_fake_follows_nvml_rules():
    nv = FakeNvml.h100_node(2)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    nv.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    h = nv.nvmlDeviceGetHandleByIndex(1)
    assert isinstance(h, pynvml.c_nvmlDevice_t)
    assert nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByUUID(nv[1].uuid)) == nv[1].uuid
    m = nv.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(m, pynvml.c_nvmlMemory_t) and m.used + m.free == m.total == 81559 * MIB
    u = nv.nvmlDeviceGetUtilizationRates(h)
    assert isinstance(u, pynvml.c_nvmlUtilization_t) and 0 <= u.gpu <= 100
    assert nv.nvmlDeviceGetPciInfo(h).busId == "00000000:2A:00.0"
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetTemperature(h, 99)
    es = nv.nvmlEventSetCreate()
    with pytest.raises(pynvml.NVMLError_Timeout):
        nv.nvmlEventSetWait(es, 0)
    nv.nvmlEventSetFree(es)
    nv.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetMemoryInfo(h)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlShutdown()
    with pytest.raises(ValueError):
        FakeGpu(unsupported={"not-a-feature"})


def test_fake_simulation_evolves_and_hooks_apply():
    clock = ManualClock()
    nv = FakeNvml.h100_node(1, node_seed=7, clock=clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    t_idle = nv.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    clock.advance(120)
    for _ in range(60):  # a minute of training, read every second
        clock.advance(1)
        util = nv.nvmlDeviceGetUtilizationRates(h).gpu
    assert util > 80
    assert nv.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) > t_idle + 15
    assert 500_000 < nv.nvmlDeviceGetPowerUsage(h) <= 700_000
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    assert 0.6 * mem.total < mem.used < mem.total
    hot = nv[0]
    hot.set_temperature(95)
    reasons = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
    assert reasons & pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert nv.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) < 1500
    hot.set_temperature(None)
    hot.set_throttle_reasons(pynvml.nvmlClocksEventReasonSwPowerCap)
    assert nv.nvmlDeviceGetCurrentClocksEventReasons(h) == pynvml.nvmlClocksEventReasonSwPowerCap


# --------------------------------------------------------------------------------------------
# fields and units


def test_fields_units_and_identity():
    nv = FakeNvml.h100_node(2, node_seed=1)
    g0 = nv[0]
    g0.set_power(512.345)
    g0.set_memory_used(10 * GIB)
    g0.set_temperature(66)
    g0.set_utilization(87, 41)
    g0.set_throttle_reasons(pynvml.nvmlClocksEventReasonSwPowerCap)
    g0.add_ecc_errors(corrected=3, uncorrected=1)
    s = started(nv)
    try:
        samples = s.sample_once()
    finally:
        s.shutdown()
    assert [x.gpu_index for x in samples] == [0, 1]
    for x, g in zip(samples, nv.gpus):
        assert x.gpu_uuid == g.uuid and x.gpu_uuid.startswith("GPU-")
        assert x.pci_bus_id == g.pci_bus_id
        assert x.gpu_name == "NVIDIA H100 80GB HBM3"
        assert x.memory_total_bytes == 81559 * MIB
        assert x.power_limit_w == 700.0  # 700000 mW
        assert x.memory_clock_mhz == 2619.0
        assert abs(x.timestamp_ns - time.time_ns()) < 5e9
    x = samples[0]
    assert x.power_w == pytest.approx(512.345)  # 512345 mW -> W
    assert x.memory_used_bytes == 10 * GIB
    assert x.temperature_c == 66.0 and x.memory_temperature_c == 73.0
    assert (x.gpu_utilization_pct, x.memory_utilization_pct) == (87.0, 41.0)
    assert x.throttle_reasons == pynvml.nvmlClocksEventReasonSwPowerCap
    assert (x.ecc_corrected, x.ecc_uncorrected) == (3.0, 1.0)
    assert x.xid == 0
    assert samples[1].ecc_corrected == 0.0
    assert s.gpus[0].uuid == g0.uuid and s.gpus[0].power_limit_w == 700.0


def test_unsupported_field_is_turned_off_for_that_device_only(caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    nv = FakeNvml([FakeGpu.h100(0, unsupported={"memory_temperature", "ecc", "power"}),
                   FakeGpu.h100(1)])
    s = started(nv)
    for _ in range(5):
        samples = s.sample_once()
    s.shutdown()
    a, b = samples
    assert math.isnan(a.memory_temperature_c) and math.isnan(a.power_w)
    assert math.isnan(a.ecc_corrected) and math.isnan(a.ecc_uncorrected)
    assert not math.isnan(b.memory_temperature_c) and not math.isnan(b.power_w)
    assert b.ecc_corrected == 0.0
    # asked once on the unsupporting device, every tick on the other
    assert nv.call_count("nvmlDeviceGetFieldValues", 0) == 1
    assert nv.call_count("nvmlDeviceGetFieldValues", 1) == 5
    assert nv.call_count("nvmlDeviceGetPowerUsage", 0) == 1
    assert nv.call_count("nvmlDeviceGetPowerUsage", 1) == 5
    assert nv.call_count("nvmlDeviceGetTotalEccErrors", 0) == 2  # corrected + uncorrected, once
    assert nv.call_count("nvmlDeviceGetTotalEccErrors", 1) == 10
    assert s.stats()["fields_off"] == {
        nv[0].uuid: ["ecc_corrected", "ecc_uncorrected", "memory_temperature", "power"]}
    off_lines = [r for r in records(caplog) if "turned off" in r.getMessage()]
    assert len(off_lines) == 4


def test_consumer_gpu_without_ecc_and_memory_temperature():
    nv = FakeNvml([FakeGpu.rtx_4090(0)])
    s = started(nv)
    x = s.sample_once()[0]
    s.shutdown()
    assert x.gpu_name == "NVIDIA GeForce RTX 4090" and x.power_limit_w == 450.0
    assert math.isnan(x.memory_temperature_c) and math.isnan(x.ecc_corrected)
    assert not math.isnan(x.temperature_c)


def test_transient_error_gives_nan_for_that_sample_and_logs_once(caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    nv = FakeNvml.h100_node(1)
    s = started(nv)
    nv[0].fail_next("nvmlDeviceGetPowerUsage", pynvml.NVMLError_Unknown, times=3)
    powers = [s.sample_once()[0].power_w for _ in range(5)]
    s.shutdown()
    assert [math.isnan(p) for p in powers] == [True, True, True, False, False]
    assert nv.call_count("nvmlDeviceGetPowerUsage", 0) == 5  # not turned off
    failures = [r for r in records(caplog) if "reading power failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
    assert s.stats()["read_errors"] == 3


def test_lost_gpu_gives_nan_and_a_bounded_number_of_log_lines(caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    nv = FakeNvml.h100_node(2)
    s = started(nv)
    nv[1].lose()
    s.sample_once()
    n_lines = len(records(caplog))
    for _ in range(5):
        a, b = s.sample_once()
    s.shutdown()
    assert len(records(caplog)) == n_lines  # repeats are not logged
    assert not math.isnan(a.temperature_c)
    assert math.isnan(b.temperature_c) and math.isnan(b.memory_used_bytes)
    assert b.gpu_uuid == nv[1].uuid  # identity still attached


def test_throttle_reasons_fall_back_to_the_old_name():
    old_bindings = FakeNvml([FakeGpu.h100(0)],
                            missing_functions={"nvmlDeviceGetCurrentClocksEventReasons"})
    assert getattr(old_bindings, "nvmlDeviceGetCurrentClocksEventReasons", None) is None
    old_driver = FakeNvml([FakeGpu.h100(0)],
                          driver_missing_functions={"nvmlDeviceGetCurrentClocksEventReasons"})
    for nv in (old_bindings, old_driver):
        nv[0].set_throttle_reasons(pynvml.nvmlClocksEventReasonHwSlowdown)
        s = started(nv)
        assert s.sample_once()[0].throttle_reasons == pynvml.nvmlClocksEventReasonHwSlowdown
        assert s.sample_once()[0].throttle_reasons == pynvml.nvmlClocksEventReasonHwSlowdown
        s.shutdown()
        assert nv.call_count("nvmlDeviceGetCurrentClocksThrottleReasons") == 2
        assert s.stats()["fields_off"] == {}


def test_power_limit_is_refreshed_occasionally():
    nv = FakeNvml.h100_node(1)
    s = started(nv, interval_s=0.1)  # refresh about once a minute = every 600 ticks
    s.sample_once()
    nv[0].set_power_limit(500)
    limits = [s.sample_once()[0].power_limit_w for _ in range(600)]
    s.shutdown()
    assert limits[0] == 700.0 and limits[-1] == 500.0


# --------------------------------------------------------------------------------------------
# no NVML


@pytest.mark.parametrize("make", [FakeNvml.library_not_found, FakeNvml.driver_not_loaded])
def test_no_nvml_logs_one_line_and_stays_off(make, caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    got = []
    s = GpuSampler(got.append, interval_s=0.1, nvml=make())
    assert s.start() is False
    assert not s.enabled
    assert sampler_threads() == []
    assert s.sample_once() == []
    s.shutdown()
    s.shutdown()
    assert got == []
    lines = records(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "GPU sampling off" in lines[0].getMessage()


def test_pynvml_not_importable_logs_one_line(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    s = GpuSampler(lambda b: None, interval_s=0.1)
    assert s.start() is False
    assert sampler_threads() == []
    s.shutdown()
    assert len(records(caplog)) == 1


def test_no_visible_gpu_turns_sampler_off_and_shuts_nvml_down():
    nv = FakeNvml.h100_node(2)
    s = GpuSampler(lambda b: None, nvml=nv, cuda_visible_devices="")
    assert s.start() is False
    assert not nv.initialized and sampler_threads() == []


# --------------------------------------------------------------------------------------------
# which GPUs: CUDA_VISIBLE_DEVICES and local rank


@pytest.fixture
def shuffled():
    """Four GPUs whose NVML index order is not PCI bus order: CUDA ordinal i is the i-th by bus."""
    gpus = [
        FakeGpu(uuid="GPU-aaaa1111-0000-0000-0000-000000000000", pci_bus_id="00000000:3A:00.0"),
        FakeGpu(uuid="GPU-bbbb2222-0000-0000-0000-000000000000", pci_bus_id="00000000:18:00.0"),
        FakeGpu(uuid="GPU-aaaa3333-0000-0000-0000-000000000000", pci_bus_id="00000000:DB:00.0"),
        FakeGpu(uuid="GPU-cccc4444-0000-0000-0000-000000000000", pci_bus_id="00000000:5D:00.0"),
    ]
    nv = FakeNvml(gpus)
    nv.nvmlInit()
    yield nv
    nv.nvmlShutdown()


def picked(nv, cvd, local_rank=None, sample_all=False):
    return [nv.nvmlDeviceGetIndex(h) for h in select_devices(nv, cvd, local_rank, sample_all)]


def test_cuda_visible_devices_indexes_are_pci_ordered(shuffled):
    # PCI order: 18 (nvml 1), 3A (nvml 0), 5D (nvml 3), DB (nvml 2)
    assert picked(shuffled, None) == [1, 0, 3, 2]
    assert picked(shuffled, "0") == [1]
    assert picked(shuffled, "2,0") == [3, 1]
    assert picked(shuffled, " 1 , 3 ") == [0, 2]


def test_cuda_visible_devices_uuids_and_prefixes(shuffled):
    assert picked(shuffled, "GPU-cccc4444-0000-0000-0000-000000000000") == [3]
    assert picked(shuffled, "GPU-bbbb,GPU-aaaa3") == [1, 2]
    assert picked(shuffled, "gpu-CCCC") == [3]  # case-insensitive, like CUDA
    assert picked(shuffled, "GPU-cccc,0") == [3, 1]  # mixed forms


def test_cuda_visible_devices_empty_and_none_values(shuffled):
    assert picked(shuffled, "") == []
    assert picked(shuffled, "-1") == []
    assert picked(shuffled, "NoDevFiles") == []


def test_cuda_visible_devices_stops_at_first_invalid_entry(shuffled, caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    assert picked(shuffled, "0,7,1") == [1]  # 7 does not exist: it and what follows are ignored
    assert picked(shuffled, "GPU-aaaa,1") == []  # ambiguous prefix (two GPUs start so)
    assert picked(shuffled, "GPU-ffff") == []
    assert picked(shuffled, "1,-1,2") == [0]
    assert picked(shuffled, "0,0,1") == [1, 0]  # duplicates collapse
    assert len(records(caplog)) == 4


def test_cuda_visible_devices_mig_uuids(caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    mig = "MIG-11111111-2222-3333-4444-555555555555"
    nv = FakeNvml([FakeGpu.h100(0), FakeGpu.h100(1, mig_uuids=[mig, "MIG-99999999-2222-3333-4444-555555555555"])])
    nv.nvmlInit()
    assert picked(nv, mig) == [1]
    assert picked(nv, f"MIG-{nv[0].uuid}/1/0") == [0]  # pre-R470 form names the parent
    assert picked(nv, "MIG-deadbeef-0000-0000-0000-000000000000,0") == [0]  # unknown: skipped
    assert len(records(caplog)) == 1


def test_local_rank_picks_its_device(shuffled):
    assert picked(shuffled, None, local_rank=0) == [1]
    assert picked(shuffled, None, local_rank=3) == [2]
    assert picked(shuffled, "2,3", local_rank=1) == [2]
    assert picked(shuffled, "3", local_rank=5) == [2]  # one visible GPU: that one
    assert picked(shuffled, "0,1", local_rank=2) == []  # no GPU for this rank
    assert picked(shuffled, "0,1", local_rank=1, sample_all=True) == [0, 1, 2, 3]


def test_sampler_reads_cuda_visible_devices_from_the_environment(monkeypatch):
    nv = FakeNvml.h100_node(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{nv[3].uuid[:12]},1")
    s = GpuSampler(lambda b: None, nvml=nv, local_rank=1)
    assert s.start(run_thread=False)
    assert [g.index for g in s.gpus] == [1]
    s.shutdown()


# --------------------------------------------------------------------------------------------
# the thread


def test_interval_is_validated():
    for bad in (0.09, 0, -1, float("nan"), float("inf"), "fast"):
        with pytest.raises(ValueError, match="interval_s"):
            GpuSampler(lambda b: None, interval_s=bad)
    GpuSampler(lambda b: None, interval_s=0.1)
    with pytest.raises(ValueError, match="local_rank"):
        GpuSampler(lambda b: None, local_rank=-1)


def test_thread_samples_every_interval_and_calls_sink_once_per_tick():
    nv = FakeNvml.h100_node(2)
    q: queue.Queue = queue.Queue()
    s = GpuSampler(q.put, interval_s=0.1, nvml=nv, cuda_visible_devices=None)
    assert s.start()
    try:
        assert [t.daemon for t in sampler_threads()] == [True]
        batches = [q.get(timeout=5) for _ in range(4)]
    finally:
        s.shutdown()
    for batch in batches:
        assert [x.gpu_uuid for x in batch] == [nv[0].uuid, nv[1].uuid]
        assert all(isinstance(x, GpuSample) for x in batch)
    t0, t3 = batches[0][0].timestamp_ns, batches[3][0].timestamp_ns
    assert 0.2e9 < t3 - t0 < 2e9
    st = s.stats()
    assert st["samples"] >= 8 and st["mean_s_per_sample_per_gpu"] > 0


def test_shutdown_interrupts_a_long_interval_and_is_idempotent():
    nv = FakeNvml.h100_node(2)
    q: queue.Queue = queue.Queue()
    s = GpuSampler(q.put, interval_s=10.0, nvml=nv, cuda_visible_devices=None)
    assert s.start()
    q.get(timeout=5)  # first sample is taken at once; the thread now waits 10 s
    t = time.monotonic()
    s.shutdown()
    assert time.monotonic() - t < 1.0
    assert sampler_threads() == [] and not s.enabled
    assert not nv.initialized and nv.open_event_sets() == 0
    s.shutdown()
    s.shutdown(timeout=0)
    assert nv.call_count("nvmlShutdown") == 1
    assert s.start() is False  # a shut-down sampler does not come back


def test_sink_errors_are_counted_and_logged_once(caplog):
    caplog.set_level(logging.DEBUG, logger="runwire.gpu")
    calls = threading.Semaphore(0)

    def bad_sink(batch):
        calls.release()
        raise RuntimeError("downstream broke")

    s = GpuSampler(bad_sink, interval_s=0.1, nvml=FakeNvml.h100_node(1), cuda_visible_devices=None)
    s.start()
    try:
        for _ in range(3):
            assert calls.acquire(timeout=5)
    finally:
        s.shutdown()
    assert s.stats()["sink_errors"] >= 3
    assert len([r for r in records(caplog) if "sink failed" in r.getMessage()]) == 1


def test_shutdown_from_inside_the_sink():
    nv = FakeNvml.h100_node(1)
    done = threading.Event()
    holder = {}

    def sink(batch):
        holder["s"].shutdown()
        done.set()

    s = holder["s"] = GpuSampler(sink, interval_s=0.1, nvml=nv, cuda_visible_devices=None)
    s.start()
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sampler_threads() == [] and not nv.initialized


# --------------------------------------------------------------------------------------------
# XID events


def test_xid_event_is_delivered_once():
    nv = FakeNvml.h100_node(2)
    s = started(nv)
    assert [x.xid for x in s.sample_once()] == [0, 0]
    nv[1].queue_xid(48)
    nv[1].queue_xid(79)  # two in one interval: the last one is reported
    assert [x.xid for x in s.sample_once()] == [0, 79]
    assert [x.xid for x in s.sample_once()] == [0, 0]
    s.shutdown()
    assert nv.open_event_sets() == 0


def test_xid_delivered_through_the_thread():
    nv = FakeNvml.h100_node(2)
    q: queue.Queue = queue.Queue()
    s = GpuSampler(q.put, interval_s=0.1, nvml=nv, cuda_visible_devices=None)
    s.start()
    try:
        q.get(timeout=5)
        nv[0].queue_xid(63)
        seen = []
        for _ in range(4):
            seen += [(x.gpu_index, x.xid) for x in q.get(timeout=5) if x.xid]
    finally:
        s.shutdown()
    assert seen == [(0, 63)]


def test_xid_unsupported_device_is_not_registered():
    nv = FakeNvml([FakeGpu.h100(0, unsupported={"xid"}), FakeGpu.h100(1)])
    s = started(nv)
    nv[0].queue_xid(79)  # nobody listens on gpu 0: dropped, as by the driver
    nv[1].queue_xid(31)
    assert [x.xid for x in s.sample_once()] == [0, 31]
    assert s.stats()["fields_off"] == {nv[0].uuid: ["xid"]}
    s.shutdown()


def test_no_event_api_at_all():
    nv = FakeNvml([FakeGpu.h100(0, unsupported={"xid"})])
    s = started(nv)
    nv[0].queue_xid(79)
    assert s.sample_once()[0].xid == 0
    s.shutdown()
    assert nv.call_count("nvmlEventSetWait") == 0 and nv.open_event_sets() == 0


# --------------------------------------------------------------------------------------------
# fork


def test_after_fork_the_child_copy_is_inert():
    nv = FakeNvml.h100_node(1)
    q: queue.Queue = queue.Queue()
    s = GpuSampler(q.put, interval_s=0.1, nvml=nv, cuda_visible_devices=None)
    s.start()
    q.get(timeout=5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            before = sum(nv.calls.values())
            s._after_fork_in_child()
            s.shutdown()
            ok = (not s.enabled and s.start() is False and s.sample_once() == []
                  and sum(nv.calls.values()) == before)
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    try:
        child_code = os.read(r, 1)
        os.waitpid(pid, 0)
    finally:
        os.close(r)
        s.shutdown()
    assert child_code == b"\x00"
    assert not nv.initialized  # the parent still owned and released NVML


# --------------------------------------------------------------------------------------------
# wire encoding


def test_encode_gpu_batch_round_trip_keeps_nan():
    nv = FakeNvml([FakeGpu.h100(0, unsupported={"memory_temperature", "ecc"}), FakeGpu.h100(1)])
    s = started(nv)
    nv[1].queue_xid(79)
    samples = s.sample_once() + s.sample_once() + s.sample_once()
    s.shutdown()
    wire = encode_gpu_batch(samples).SerializeToString()
    batch = telemetry_pb2.GpuBatch.FromString(wire)
    assert list(batch.gpu_uuids) == [nv[0].uuid, nv[1].uuid]
    assert list(batch.pci_bus_ids) == [nv[0].pci_bus_id, nv[1].pci_bus_id]
    assert list(batch.gpu_indexes) == [0, 1]
    assert list(batch.gpu_names) == ["NVIDIA H100 80GB HBM3"] * 2
    assert list(batch.gpu_ref) == [0, 1, 0, 1, 0, 1]
    assert list(batch.timestamps_ns) == [x.timestamp_ns for x in samples]
    assert list(batch.power_w) == [x.power_w for x in samples]
    assert list(batch.xid) == [0, 79, 0, 0, 0, 0]
    assert all(math.isnan(v) for v in batch.memory_temperature_c[0::2])
    assert all(math.isnan(v) for v in batch.ecc_uncorrected[0::2])
    assert not any(math.isnan(v) for v in batch.memory_temperature_c[1::2])
    back = decode_gpu_batch(batch)
    for a, b in zip(back, samples):
        for field in GpuSample.__slots__:
            va, vb = getattr(a, field), getattr(b, field)
            assert va == vb or (isinstance(vb, float) and math.isnan(va) and math.isnan(vb)), field
    assert encode_gpu_batch([]).SerializeToString() == b""


def test_sampling_cost_is_reported():
    nv = FakeNvml.h100_node(8)
    s = started(nv)
    for _ in range(50):
        s.sample_once()
    st = s.stats()
    s.shutdown()
    assert st["ticks"] == 50 and st["samples"] == 400
    assert 0 < st["mean_s_per_sample_per_gpu"] < 0.01

"""NVML GPU sampler: GPU health of the GPUs this process uses, every ``interval_s`` seconds.

The sampler probes NVML once (``GpuSampler.start``). Without NVML (no ``pynvml``, no driver, no
GPU) it logs one line on the ``runwire.gpu`` logger and stays off; training never notices. A
metric that a device does not support is turned off for that device on the first
``NVMLError_NotSupported`` and never asked again; any other NVML error gives NaN for that sample
only. Every error is logged once per (device, field), never per tick.

Samples go to ``sink(list[GpuSample])``, once per tick, from the sampler's own daemon thread
(``runwire-gpu-sampler``); ``encode_gpu_batch`` turns them into the wire's columnar
``GpuBatch`` (runwire.gpu_wire). Which GPUs a process samples is runwire.gpu_devices.

Only stdlib, ``pynvml`` (imported lazily, inside the probe) and the generated protobuf code are
imported here: ``import runwire`` must stay light and must work on machines without NVML.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from runwire.gpu_devices import nvml_text, pci_bus_id_of, select_devices
from runwire.gpu_wire import GpuSample

__all__ = ["GpuInfo", "GpuSampler", "MIN_INTERVAL_S"]

log = logging.getLogger("runwire.gpu")

NAN = math.nan

#: Smallest accepted sampling interval. NVML's own counters (utilisation, power) update at
#: roughly 1/6 s to 1 s; sampling faster only burns CPU in every training process.
MIN_INTERVAL_S = 0.1

# The power limit changes only when an administrator changes it; re-read it about once a minute.
_POWER_LIMIT_REFRESH_S = 60.0

# Bound on the XID events drained per tick, so a storm of events cannot stall a tick.
_MAX_EVENTS_PER_TICK = 64


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Static facts about one sampled GPU, read once at the probe."""

    index: int
    uuid: str
    pci_bus_id: str
    name: str
    memory_total_bytes: float
    power_limit_w: float




class _Device:
    """Per-GPU state of the sampler: handle, static info, and the fields turned off."""

    __slots__ = ("handle", "index", "uuid", "pci_bus_id", "name", "memory_total",
                 "power_limit", "off", "throttle_fn")

    def __init__(self, handle: Any, index: int, uuid: str, pci_bus_id: str, name: str) -> None:
        self.handle = handle
        self.index = index
        self.uuid = uuid
        self.pci_bus_id = pci_bus_id
        self.name = name
        self.memory_total = NAN
        self.power_limit = NAN
        self.off: set[str] = set()
        self.throttle_fn: Callable[[Any], int] | None = None


_UNSET: Any = object()


class GpuSampler:
    """Samples the GPUs this process uses on a background thread.

    Parameters (the emitter's configuration maps its ``RUNWIRE_*`` settings onto these):

    - ``sink``: called as ``sink(samples)`` once per tick from the sampler thread; exceptions it
      raises are logged once and counted, never propagated.
    - ``interval_s``: seconds between samples, default 1.0, at least 0.1 (ValueError otherwise).
    - ``local_rank``: this process's local rank (torchrun ``LOCAL_RANK``); with several visible
      GPUs, only the one at that position is sampled. None (default): every visible GPU.
    - ``sample_all``: sample every GPU of the machine, ignoring CUDA_VISIBLE_DEVICES and the
      local rank (for a per-node monitor process). Default False.
    - ``nvml``: the NVML binding module; default ``pynvml`` imported at ``start()``. Tests and
      the demo pass ``runwire.simulated_nvml.FakeNvml``.
    - ``cuda_visible_devices``: override for the ``CUDA_VISIBLE_DEVICES`` value (None = unset);
      default: read from the environment at ``start()``.
    """

    def __init__(
        self,
        sink: Callable[[list[GpuSample]], None],
        interval_s: float = 1.0,
        local_rank: int | None = None,
        sample_all: bool = False,
        nvml: Any = None,
        *,
        cuda_visible_devices: str | None = _UNSET,
    ) -> None:
        try:
            interval = float(interval_s)
        except (TypeError, ValueError):
            raise ValueError(f"GpuSampler interval_s must be a number of seconds, got {interval_s!r}") from None
        if not interval >= MIN_INTERVAL_S or math.isinf(interval):  # also rejects NaN
            raise ValueError(
                f"GpuSampler interval_s must be a finite number >= {MIN_INTERVAL_S} s, got {interval_s!r}")
        if local_rank is not None and (not isinstance(local_rank, int) or local_rank < 0):
            raise ValueError(f"GpuSampler local_rank must be a non-negative int or None, got {local_rank!r}")
        self._sink = sink
        self._interval = interval
        self._local_rank = local_rank
        self._sample_all = bool(sample_all)
        self._nvml = nvml
        self._cvd = cuda_visible_devices
        self._devices: list[_Device] = []
        self._enabled = False
        self._started = False
        self._closed = False
        self._forked = False
        self._nvml_initialised = False
        self._released = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._logged: set[tuple] = set()
        self._NVMLError: type[BaseException] = Exception
        self._off_errors: tuple[type[BaseException], ...] = ()
        self._timeout_error: type[BaseException] | None = None
        self._xid_mask = 0
        self._power_limit_every = max(1, round(_POWER_LIMIT_REFRESH_S / interval))
        # counters (written by the sampler thread only; reads from other threads are benign)
        self._ticks = 0
        self._samples = 0
        self._sample_seconds = 0.0
        self._sink_errors = 0
        self._read_errors = 0

    # ---- public API ------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True while the sampler is on (NVML found, at least one GPU selected, not shut down)."""
        return self._enabled

    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def gpus(self) -> list[GpuInfo]:
        """The GPUs being sampled (empty before ``start()`` or when off)."""
        return [GpuInfo(d.index, d.uuid, d.pci_bus_id, d.name, d.memory_total, d.power_limit)
                for d in self._devices]

    def start(self, run_thread: bool = True) -> bool:
        """Probe NVML once, pick the GPUs, and start the sampler thread. Returns ``enabled``.

        Never raises for a missing or broken NVML: it logs one line and stays off. Calling it
        again, or after ``shutdown()``, does nothing. ``run_thread=False`` probes without
        starting the thread; ticks are then driven by ``sample_once()`` (tests, benchmarks).
        """
        if self._started or self._closed or self._forked:
            return self._enabled
        self._started = True
        if not self._probe():
            return False
        self._enabled = True
        if run_thread:
            self._thread = threading.Thread(target=self._run, name="runwire-gpu-sampler", daemon=True)
            self._thread.start()
        return True

    def sample_once(self) -> list[GpuSample]:
        """Take one sample of every GPU now and return it (the sink is not called).

        Only for a sampler started with ``run_thread=False``; returns [] when off.
        """
        if self._thread is not None:
            raise RuntimeError("sample_once() is for samplers started with run_thread=False")
        if not self._enabled:
            return []
        return self._tick()

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop the thread (interrupting its wait at once), free the event set, shut NVML down.

        Safe to call twice, before ``start()``, and from the sink itself.
        """
        self._closed = True
        self._enabled = False
        self._stop.set()
        t = self._thread
        if t is not None:
            if t is threading.current_thread():
                return  # called from the sink: the loop ends after it returns and cleans up
            t.join(timeout)
            if t.is_alive():
                # Stuck in an NVML call: it cleans up itself when (if) that call returns.
                self._log_once(("shutdown",), logging.WARNING,
                               "runwire.gpu: sampler thread did not stop within %.1f s", timeout)
                return
        self._release()

    def stats(self) -> dict[str, Any]:
        """Counters: ticks, samples (one per GPU per tick), the mean seconds NVML reading took per
        sample per GPU, sink and read errors, and the fields turned off per GPU uuid."""
        samples = self._samples
        return {
            "enabled": self._enabled,
            "gpus": len(self._devices),
            "ticks": self._ticks,
            "samples": samples,
            "mean_s_per_sample_per_gpu": (self._sample_seconds / samples) if samples else NAN,
            "sink_errors": self._sink_errors,
            "read_errors": self._read_errors,
            "fields_off": {d.uuid: sorted(d.off) for d in self._devices if d.off},
        }

    def _after_fork_in_child(self) -> None:
        """Make this object inert in a forked child: no thread exists there and the parent's NVML
        handles must not be touched. Register with ``os.register_at_fork(after_in_child=...)``."""
        self._forked = True
        self._enabled = False
        self._closed = True
        self._thread = None  # the parent's thread does not exist in the child
        self._lock = threading.Lock()  # the parent's may have been held at fork time
        self._stop = threading.Event()
        self._stop.set()
        self._released = True
        self._nvml_initialised = False
        self._event_set = None

    # ---- probe -----------------------------------------------------------------------------

    def _probe(self) -> bool:
        nv = self._nvml
        if nv is None:
            try:
                import pynvml as nv  # lazily: import runwire must work without NVML
            except ImportError as e:
                log.info("runwire.gpu: pynvml not importable (%s); GPU sampling off", e)
                return False
            self._nvml = nv
        NVMLError = nv.NVMLError
        self._NVMLError = NVMLError
        self._off_errors = tuple(c for c in (
            getattr(nv, "NVMLError_NotSupported", None),
            getattr(nv, "NVMLError_FunctionNotFound", None),
            getattr(nv, "NVMLError_NoPermission", None),
        ) if c is not None)
        self._timeout_error = getattr(nv, "NVMLError_Timeout", None)
        try:
            nv.nvmlInit()
        except NVMLError as e:
            quiet = tuple(c for c in (getattr(nv, "NVMLError_LibraryNotFound", None),
                                      getattr(nv, "NVMLError_DriverNotLoaded", None)) if c)
            level = logging.INFO if quiet and isinstance(e, quiet) else logging.WARNING
            log.log(level, "runwire.gpu: NVML unavailable (%s: %s); GPU sampling off",
                    type(e).__name__, e)
            return False
        except Exception as e:  # a broken binding must not break training
            log.warning("runwire.gpu: NVML init failed (%s: %s); GPU sampling off", type(e).__name__, e)
            return False
        self._nvml_initialised = True
        try:
            cvd = os.environ.get("CUDA_VISIBLE_DEVICES") if self._cvd is _UNSET else self._cvd
            handles = select_devices(nv, cvd, self._local_rank, self._sample_all)
            self._devices = [d for d in (self._describe(h, i) for i, h in enumerate(handles)) if d]
        except Exception as e:
            log.warning("runwire.gpu: GPU discovery failed (%s: %s); GPU sampling off",
                        type(e).__name__, e)
            self._devices = []
        if not self._devices:
            log.info("runwire.gpu: no GPU selected for this process; GPU sampling off")
            self._release()
            return False
        self._setup_events()
        log.info("runwire.gpu: sampling %d GPU(s) every %.3g s: %s", len(self._devices),
                 self._interval, ", ".join(f"{d.index}:{d.uuid}" for d in self._devices))
        return True

    def _describe(self, handle: Any, pos: int) -> _Device | None:
        nv = self._nvml
        NVMLError = self._NVMLError
        try:
            uuid = nvml_text(nv.nvmlDeviceGetUUID(handle))
        except NVMLError as e:
            log.warning("runwire.gpu: cannot read the UUID of a selected GPU (%s); skipping it", e)
            return None
        try:
            index = int(nv.nvmlDeviceGetIndex(handle))
        except NVMLError:
            index = pos
        try:
            pci = pci_bus_id_of(nv, handle)
        except NVMLError:
            pci = ""
        try:
            name = nvml_text(nv.nvmlDeviceGetName(handle))
        except NVMLError:
            name = ""
        d = _Device(handle, index, uuid, pci, name)
        mem = self._read(d, "memory", nv.nvmlDeviceGetMemoryInfo, handle)
        if mem is not None:
            d.memory_total = float(mem.total)
        self._refresh_power_limit(d)
        new = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        d.throttle_fn = new or getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        if d.throttle_fn is None:
            d.off.add("throttle_reasons")
        if not hasattr(nv, "nvmlDeviceGetFieldValues") or not hasattr(nv, "NVML_FI_DEV_MEMORY_TEMP"):
            d.off.add("memory_temperature")
        return d

    def _refresh_power_limit(self, d: _Device) -> None:
        mw = self._read(d, "power_limit", self._nvml.nvmlDeviceGetEnforcedPowerLimit, d.handle)
        if mw is not None:
            d.power_limit = mw / 1000.0

    def _setup_events(self) -> None:
        nv = self._nvml
        NVMLError = self._NVMLError
        mask = getattr(nv, "nvmlEventTypeXidCriticalError", None)
        if mask is None or not hasattr(nv, "nvmlEventSetCreate"):
            for d in self._devices:
                d.off.add("xid")
            return
        try:
            es = nv.nvmlEventSetCreate()
        except NVMLError as e:
            log.info("runwire.gpu: NVML event API unavailable (%s); XID events off", e)
            for d in self._devices:
                d.off.add("xid")
            return
        registered = 0
        for d in self._devices:
            try:
                nv.nvmlDeviceRegisterEvents(d.handle, mask, es)
                registered += 1
            except NVMLError as e:
                d.off.add("xid")
                self._log_once((d.uuid, "xid"), logging.INFO,
                               "runwire.gpu: gpu %d (%s): XID events not available (%s); off",
                               d.index, d.uuid, e)
        if registered:
            self._event_set = es
            self._xid_mask = mask
        else:
            try:
                nv.nvmlEventSetFree(es)
            except NVMLError:
                pass

    # ---- sampling --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            interval = self._interval
            next_t = time.monotonic()
            stop = self._stop
            while not stop.is_set():
                try:
                    samples = self._tick()
                except Exception as e:  # a bug here must not kill the thread silently each tick
                    self._log_once(("tick",), logging.WARNING,
                                   "runwire.gpu: sampling failed (%s: %s)", type(e).__name__, e)
                    samples = []
                if samples and not stop.is_set():
                    try:
                        self._sink(samples)
                    except Exception as e:
                        self._sink_errors += 1
                        self._log_once(("sink",), logging.WARNING,
                                       "runwire.gpu: GPU sample sink failed (%s: %s); further "
                                       "failures are counted, not logged", type(e).__name__, e)
                next_t += interval
                now = time.monotonic()
                if next_t <= now:  # fell behind (slow NVML, suspended VM): skip, do not burst
                    next_t += math.ceil((now - next_t) / interval + 1e-9) * interval
                if stop.wait(next_t - now):
                    break
        finally:
            self._release()

    def _tick(self) -> list[GpuSample]:
        t0 = time.perf_counter()
        xids = self._drain_events() if self._event_set is not None else None
        refresh_limit = self._ticks % self._power_limit_every == 0 and self._ticks > 0
        out = [self._sample(d, xids, refresh_limit) for d in self._devices]
        self._sample_seconds += time.perf_counter() - t0
        self._ticks += 1
        self._samples += len(out)
        return out

    def _read(self, d: _Device, field: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML getter; None on failure (turning the field off when unsupported)."""
        try:
            return fn(*args)
        except self._NVMLError as e:
            self._field_error(d, field, e)
            return None

    def _number(self, d: _Device, field: str, fn: Callable[..., Any], *args: Any) -> float:
        """One numeric NVML field as a float; NaN when it is off or the read failed."""
        if field in d.off:
            return NAN
        v = self._read(d, field, fn, *args)
        return NAN if v is None else float(v)

    def _field_error(self, d: _Device, field: str, e: BaseException) -> None:
        if isinstance(e, self._off_errors):
            d.off.add(field)
            self._log_once((d.uuid, field), logging.INFO,
                           "runwire.gpu: gpu %d (%s): %s not available (%s); turned off",
                           d.index, d.uuid, field, e)
        else:
            self._read_errors += 1
            self._log_once((d.uuid, field), logging.WARNING,
                           "runwire.gpu: gpu %d (%s): reading %s failed (%s: %s); NaN this "
                           "sample, repeats not logged", d.index, d.uuid, field, type(e).__name__, e)

    def _sample(self, d: _Device, xids: dict[str, int] | None, refresh_limit: bool) -> GpuSample:
        nv = self._nvml
        h = d.handle
        off = d.off
        read, number = self._read, self._number
        ts = time.time_ns()

        used = NAN
        total = d.memory_total
        if "memory" not in off:
            m = read(d, "memory", nv.nvmlDeviceGetMemoryInfo, h)
            if m is not None:
                used = float(m.used)
                total = float(m.total)

        temp = number(d, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)

        mem_temp = NAN
        if "memory_temperature" not in off:
            mem_temp = self._memory_temperature(d)

        gpu_util = mem_util = NAN
        if "utilization" not in off:
            u = read(d, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
            if u is not None:
                gpu_util = float(u.gpu)
                mem_util = float(u.memory)

        power = number(d, "power", nv.nvmlDeviceGetPowerUsage, h) / 1000.0  # mW -> W

        if refresh_limit and "power_limit" not in off:
            self._refresh_power_limit(d)

        sm = number(d, "sm_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        memclk = number(d, "memory_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)

        throttle = 0
        if "throttle_reasons" not in off:
            throttle = self._throttle(d)

        ecc_c = number(d, "ecc_corrected", nv.nvmlDeviceGetTotalEccErrors, h,
                       nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)
        ecc_u = number(d, "ecc_uncorrected", nv.nvmlDeviceGetTotalEccErrors, h,
                       nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)

        xid = xids.pop(d.uuid, 0) if xids else 0

        return GpuSample(d.uuid, d.pci_bus_id, d.index, d.name, ts, used, total, temp, mem_temp,
                         gpu_util, mem_util, power, d.power_limit, sm, memclk, throttle, ecc_c,
                         ecc_u, xid)

    def _memory_temperature(self, d: _Device) -> float:
        nv = self._nvml
        vals = self._read(d, "memory_temperature", nv.nvmlDeviceGetFieldValues, d.handle,
                          [nv.NVML_FI_DEV_MEMORY_TEMP])
        if vals is None:
            return NAN
        fv = vals[0]
        ret = fv.nvmlReturn
        if ret != 0:  # NVML_SUCCESS
            try:
                err = nv.NVMLError(ret)  # maps the code to its NVMLError_* subclass
            except Exception:
                err = self._NVMLError(ret)
            self._field_error(d, "memory_temperature", err)
            return NAN
        return _field_value(nv, fv)

    def _throttle(self, d: _Device) -> int:
        try:
            return int(d.throttle_fn(d.handle))
        except self._NVMLError as e:
            fnf = getattr(self._nvml, "NVMLError_FunctionNotFound", None)
            old = getattr(self._nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
            if fnf is not None and isinstance(e, fnf) and old is not None and d.throttle_fn is not old:
                d.throttle_fn = old  # driver older than the bindings: use the pre-12.x name
                return self._throttle(d)
            self._field_error(d, "throttle_reasons", e)
            return 0

    def _drain_events(self) -> dict[str, int]:
        nv = self._nvml
        es = self._event_set
        xids: dict[str, int] = {}
        timeout_error = self._timeout_error
        for _ in range(_MAX_EVENTS_PER_TICK):
            try:
                data = nv.nvmlEventSetWait(es, 0)
            except self._NVMLError as e:
                if timeout_error is None or not isinstance(e, timeout_error):
                    self._read_errors += 1
                    self._log_once(("events",), logging.WARNING,
                                   "runwire.gpu: reading NVML events failed (%s: %s)",
                                   type(e).__name__, e)
                break
            if not data.eventType & self._xid_mask:
                continue
            uuid = self._event_uuid(data)
            if uuid is not None:
                xids[uuid] = int(data.eventData)  # the last XID of the interval wins
                self._log_once((uuid, "xid", int(data.eventData)), logging.WARNING,
                               "runwire.gpu: GPU %s reported XID %d", uuid, int(data.eventData))
        return xids

    def _event_uuid(self, data: Any) -> str | None:
        if len(self._devices) == 1:
            return self._devices[0].uuid
        try:
            return nvml_text(self._nvml.nvmlDeviceGetUUID(data.device))
        except self._NVMLError:
            return None

    # ---- housekeeping ----------------------------------------------------------------------

    def _release(self) -> None:
        with self._lock:
            if self._released or self._forked:
                return
            self._released = True
            self._enabled = False
            if not self._nvml_initialised:
                return
            nv = self._nvml
            if self._event_set is not None:
                try:
                    nv.nvmlEventSetFree(self._event_set)
                except Exception:
                    pass
                self._event_set = None
            try:
                nv.nvmlShutdown()
            except Exception:
                pass
            self._nvml_initialised = False

    def _log_once(self, key: tuple, level: int, msg: str, *args: Any) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        log.log(level, msg, *args)


def _field_value(nv: Any, fv: Any) -> float:
    t = fv.valueType
    v = fv.value
    if t == getattr(nv, "NVML_VALUE_TYPE_DOUBLE", 0):
        return float(v.dVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_UNSIGNED_INT", 1):
        return float(v.uiVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_UNSIGNED_LONG", 2):
        return float(v.ulVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3):
        return float(v.ullVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4):
        return float(v.sllVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_SIGNED_INT", 5):
        return float(v.siVal)
    if t == getattr(nv, "NVML_VALUE_TYPE_UNSIGNED_SHORT", 6):
        return float(v.usVal)
    return NAN

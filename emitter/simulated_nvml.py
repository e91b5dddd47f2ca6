"""A faithful fake of the ``pynvml`` module surface that runwire uses, with simulated GPUs.

Used by the unit tests and by the demo (simulated GPUs on simulated nodes)::

    from runwire.simulated_nvml import FakeNvml, FakeGpu

    nvml = FakeNvml.h100_node(n_gpus=8, node_seed=3)       # an HGX H100 node, training
    sampler = GpuSampler(sink, nvml=nvml)
    nvml.gpus[2].set_temperature(93)                      # inject anomalies at any time
    nvml.gpus[5].queue_xid(79)
    nvml.gpus[1].add_ecc_errors(uncorrected=1)

What makes it faithful:

- the same function names and parameter names as ``pynvml`` (nvidia-ml-py);
- the same constants and the REAL exception classes (``pynvml.NVMLError_NotSupported``, ...),
  copied from ``pynvml`` itself so they can never drift;
- NVML's rules: every call before ``nvmlInit`` (or after the last ``nvmlShutdown``) raises
  ``NVMLError_Uninitialized``; a bad index or an unknown handle raises
  ``NVMLError_InvalidArgument``; an unknown UUID ``NVMLError_NotFound``; an unsupported feature
  ``NVMLError_NotSupported``; an empty event wait ``NVMLError_Timeout``;
- the same return types: ctypes handles (``c_nvmlDevice_t``), pynvml's own structs
  (``c_nvmlMemory_t``, ``c_nvmlUtilization_t``, ``nvmlPciInfo_t``, ``c_nvmlFieldValue_t`` arrays,
  ``c_nvmlEventData_t``), ints in NVML's units (mW, MHz, whole degrees C, bytes).

Every call is counted in ``FakeNvml.calls[(function_name, gpu_index_or_None)]``.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import random
import threading
import time
import uuid as _uuidlib
from collections import Counter, deque
from typing import Any, Callable, Iterable, Sequence

import pynvml
from pynvml import (  # re-exported: tests may import the error classes from here
    NVMLError,
    NVMLError_DriverNotLoaded,
    NVMLError_FunctionNotFound,
    NVMLError_GpuIsLost,
    NVMLError_InvalidArgument,
    NVMLError_LibraryNotFound,
    NVMLError_NoPermission,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Timeout,
    NVMLError_Uninitialized,
    NVMLError_Unknown,
)

__all__ = [
    "FakeNvml",
    "FakeGpu",
    "ManualClock",
    "FEATURES",
    "NVMLError",
    "NVMLError_DriverNotLoaded",
    "NVMLError_FunctionNotFound",
    "NVMLError_GpuIsLost",
    "NVMLError_InvalidArgument",
    "NVMLError_LibraryNotFound",
    "NVMLError_NoPermission",
    "NVMLError_NotFound",
    "NVMLError_NotSupported",
    "NVMLError_Timeout",
    "NVMLError_Uninitialized",
    "NVMLError_Unknown",
]

#: Feature names accepted by ``FakeGpu(unsupported=...)``. "ecc" covers both ECC counters;
#: "clocks" covers every clock domain.
FEATURES = frozenset({
    "memory", "temperature", "memory_temperature", "utilization", "power", "power_limit",
    "clocks", "throttle_reasons", "ecc", "xid", "mig",
})

_P = pynvml
_GIB = 2 ** 30
_MIB = 2 ** 20
_UPDATE_S = 0.05  # the model re-evaluates at most this often (NVML's counters are coarse too)
_NO_INSTANCE = 0xFFFFFFFF

# Fake handles are real ctypes pointers with made-up, never-dereferenced addresses, unique
# across every FakeNvml in the process (a handle from one fake is invalid in another).
_addresses = itertools.count(0x7E5700000000, 0x100)

# One lock for every fake: the sampler thread reads while a test thread injects anomalies.
_LOCK = threading.RLock()


def _new_lock_in_child() -> None:
    # A fork while the parent's sampler thread held the lock would leave it held forever in
    # the child (event sets created before the fork keep the old lock; they belong to the parent).
    global _LOCK
    _LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)

# HGX H100 8-GPU board: PCI bus numbers of the eight SXM modules.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


def _handle(addr: int, kind: Any = None) -> Any:
    return ctypes.cast(ctypes.c_void_p(addr), kind or _P.c_nvmlDevice_t)


def _address(handle: Any) -> int | None:
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ManualClock:
    """A clock for deterministic simulations: ``FakeNvml(..., clock=ManualClock())``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _MigDevice:
    __slots__ = ("parent", "uuid", "position", "address")

    def __init__(self, parent: "FakeGpu", uuid: str, position: int) -> None:
        self.parent = parent
        self.uuid = uuid
        self.position = position
        self.address = next(_addresses)


class FakeGpu:
    """One simulated GPU.

    ``unsupported``: feature names from ``FEATURES`` this GPU does not support (their getters
    raise ``NVMLError_NotSupported``; memory temperature reports NOT_SUPPORTED in its field
    value, as NVML does). ``workload``: "training" (default: startup, ~95 % busy, short pauses for
    eval/checkpoints) or "idle". ``seed`` makes the simulation reproducible.
    The simulation (utilisation -> power -> temperature with a thermal lag, memory ramping up to a
    plateau, clocks and throttle reasons following power and temperature) advances with the
    owning ``FakeNvml``'s clock; the ``set_*`` hooks pin a value until called with None.
    """

    def __init__(
        self,
        uuid: str | None = None,
        pci_bus_id: str | None = None,
        name: str = "NVIDIA H100 80GB HBM3",
        memory_total: int = 80 * _GIB,
        *,
        power_limit_w: float = 700.0,
        idle_power_w: float = 72.0,
        max_power_w: float | None = None,
        sm_clock_max_mhz: int = 1980,
        sm_clock_idle_mhz: int = 345,
        memory_clock_mhz: int = 2619,
        ambient_c: float = 27.0,
        c_per_w: float = 0.068,
        memory_temp_offset_c: float = 7.0,
        slowdown_c: float = 87.0,
        hw_slowdown_c: float = 92.0,
        unsupported: Iterable[str] = (),
        mig_uuids: Sequence[str] = (),
        workload: str = "training",
        seed: int | str = 0,
        pci_device_id: int = 0x233010DE,
    ) -> None:
        unsupported = frozenset([unsupported] if isinstance(unsupported, str) else unsupported)
        unknown = unsupported - FEATURES
        if unknown:
            raise ValueError(f"unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
        if workload not in ("training", "idle"):
            raise ValueError("workload must be 'training' or 'idle'")
        self._rng = random.Random(f"fakegpu:{seed}")
        self.uuid = uuid or "GPU-" + str(_uuidlib.UUID(int=self._rng.getrandbits(128)))
        self.pci_bus_id = pci_bus_id.upper() if pci_bus_id else None
        self.name = name
        self.memory_total = int(memory_total)
        self.power_limit_w = float(power_limit_w)
        self.idle_power_w = float(idle_power_w)
        self.max_power_w = float(max_power_w if max_power_w is not None else 0.97 * power_limit_w)
        self.sm_clock_max_mhz = int(sm_clock_max_mhz)
        self.sm_clock_idle_mhz = int(sm_clock_idle_mhz)
        self.memory_clock_mhz = int(memory_clock_mhz)
        self.ambient_c = float(ambient_c)
        self.c_per_w = float(c_per_w)
        self.memory_temp_offset_c = float(memory_temp_offset_c)
        self.slowdown_c = float(slowdown_c)
        self.hw_slowdown_c = float(hw_slowdown_c)
        self.unsupported = unsupported
        self.workload = workload
        self.pci_device_id = pci_device_id
        self.mig_uuids = list(mig_uuids)
        self.index = -1
        self.lost = False
        self.ecc_corrected = 0
        self.ecc_uncorrected = 0
        self._owner: FakeNvml | None = None
        self._address = next(_addresses)
        self._migs = [_MigDevice(self, u, i) for i, u in enumerate(self.mig_uuids)]
        self._failures: dict[str, list] = {}
        # workload shape, fixed per seed
        r = self._rng
        self._startup_s = r.uniform(2.0, 6.0)
        self._ramp_s = r.uniform(5.0, 12.0)
        self._busy_pct = r.uniform(92.0, 99.0)
        self._dip_period_s = r.uniform(45.0, 90.0)
        self._dip_len_s = r.uniform(1.5, 3.0)
        self._mem_fraction = r.uniform(0.70, 0.92)
        self._tau_s = r.uniform(12.0, 20.0)
        # model state
        self._t0: float | None = None
        self._t = 0.0
        self._util = 0.0
        self._mem_util = 0.0
        self._power = self.idle_power_w
        self._temp = self.ambient_c + self.c_per_w * self.idle_power_w
        self._mem_used = 0.0
        self._sm = self.sm_clock_idle_mhz
        self._throttle = _P.nvmlClocksEventReasonGpuIdle
        self._pins: dict[str, Any] = {}

    # ---- presets ---------------------------------------------------------------------------

    @classmethod
    def h100(cls, index: int = 0, node_seed: int | str = 0, **overrides: Any) -> "FakeGpu":
        """An H100 SXM 80GB as NVML reports it (81559 MiB, 700 W, HGX bus ids), deterministic
        in (node_seed, index)."""
        seed = f"h100:{node_seed}:{index}"
        rng = random.Random(seed)
        kw: dict[str, Any] = dict(
            uuid="GPU-" + str(_uuidlib.UUID(int=rng.getrandbits(128))),
            pci_bus_id="%08X:%02X:00.0" % (index // len(_HGX_BUSES),
                                          _HGX_BUSES[index % len(_HGX_BUSES)]),
            name="NVIDIA H100 80GB HBM3",
            memory_total=81559 * _MIB,
            seed=seed,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def rtx_4090(cls, index: int = 0, node_seed: int | str = 0, **overrides: Any) -> "FakeGpu":
        """A consumer GPU: no ECC, no memory temperature, no MIG (what NVML reports for it)."""
        seed = f"4090:{node_seed}:{index}"
        rng = random.Random(seed)
        kw: dict[str, Any] = dict(
            uuid="GPU-" + str(_uuidlib.UUID(int=rng.getrandbits(128))),
            pci_bus_id="00000000:%02X:00.0" % (0x01 + 0x20 * index),
            name="NVIDIA GeForce RTX 4090",
            memory_total=24564 * _MIB,
            power_limit_w=450.0,
            idle_power_w=25.0,
            sm_clock_max_mhz=2520,
            sm_clock_idle_mhz=210,
            memory_clock_mhz=10501,
            unsupported={"memory_temperature", "ecc", "mig"},
            seed=seed,
            pci_device_id=0x268410DE,
        )
        kw.update(overrides)
        return cls(**kw)

    # ---- anomaly hooks (thread-safe) --------------------------------------------------------

    def set_temperature(self, celsius: float | None) -> None:
        """Pin the GPU temperature (memory temperature follows at its offset); None releases it
        (the thermal model continues from the pinned value)."""
        self._pin("temperature", celsius)

    def set_memory_used(self, used_bytes: int | None) -> None:
        """Pin the memory in use (clamped to the total); None releases it."""
        self._pin("memory_used", used_bytes)

    def set_utilization(self, gpu_pct: float | None, memory_pct: float | None = None) -> None:
        """Pin utilisation (power, temperature and clocks follow); None releases it."""
        self._pin("utilization", gpu_pct)
        self._pin("memory_utilization", memory_pct)

    def set_power(self, watts: float | None) -> None:
        """Pin the power draw; None releases it."""
        self._pin("power", watts)

    def set_power_limit(self, watts: float) -> None:
        """Change the enforced power limit (what an administrator's ``nvidia-smi -pl`` does)."""
        with _LOCK:
            self.power_limit_w = float(watts)

    def set_throttle_reasons(self, mask: int | None) -> None:
        """Pin the clocks-event reasons bitmask (``pynvml.nvmlClocksEventReason*``); None
        returns to the model's reasons."""
        self._pin("throttle_reasons", mask)

    def add_ecc_errors(self, corrected: int = 0, uncorrected: int = 0) -> None:
        """Add to the volatile ECC counters (and queue the ECC events, where registered)."""
        with _LOCK:
            self.ecc_corrected += int(corrected)
            self.ecc_uncorrected += int(uncorrected)
            if self._owner is not None:
                if corrected:
                    self._owner._deliver(self, _P.nvmlEventTypeSingleBitEccError, 0)
                if uncorrected:
                    self._owner._deliver(self, _P.nvmlEventTypeDoubleBitEccError, 0)

    def queue_xid(self, code: int) -> None:
        """Raise XID ``code`` (e.g. 79 fell off the bus, 48 double-bit ECC, 63/64 row
        remapping): delivered once to every event set registered for XID events on this GPU,
        and dropped where none is (as the driver does)."""
        with _LOCK:
            if self._owner is not None:
                self._owner._deliver(self, _P.nvmlEventTypeXidCriticalError, int(code))

    def fail_next(self, function: str, error: type = NVMLError_Unknown, times: int = 1) -> None:
        """Make the next ``times`` calls of pynvml function ``function`` on this GPU raise
        ``error`` (a transient failure)."""
        if not hasattr(FakeNvml, function):
            raise ValueError(f"FakeNvml has no function {function!r}")
        with _LOCK:
            self._failures[function] = [error, int(times)]

    def lose(self) -> None:
        """The GPU falls off the bus: every call on it raises ``NVMLError_GpuIsLost``."""
        with _LOCK:
            self.lost = True

    @property
    def handle(self) -> Any:
        """The device handle NVML returns for this GPU (a ``c_nvmlDevice_t``)."""
        return _handle(self._address)

    # ---- model -----------------------------------------------------------------------------

    def _pin(self, key: str, value: Any) -> None:
        with _LOCK:
            if value is None:
                self._pins.pop(key, None)
            else:
                self._pins[key] = value
            self._t = -math.inf  # re-evaluate at the next read, even within _UPDATE_S

    def _now_state(self) -> "FakeGpu":
        owner = self._owner
        now = owner._clock() if owner is not None else time.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._t = now - 1.0  # one virtual second of history so the first read is settled
        dt = now - self._t
        if dt >= _UPDATE_S:
            self._step(now, dt)
        return self

    def _step(self, now: float, dt: float) -> None:
        r = self._rng
        pins = self._pins
        dt = min(dt, 3600.0) if math.isfinite(dt) else _UPDATE_S
        self._t = now
        e = now - self._t0  # type: ignore[operator]

        if "utilization" in pins:
            util = float(pins["utilization"])
        elif self.workload == "idle":
            util = 0.0
        else:
            since = e - self._startup_s
            if since < 0:
                target = 2.0  # loading the model and the first batches
            elif since > self._dip_period_s and since % self._dip_period_s < self._dip_len_s:
                target = 6.0  # eval / checkpoint pause
            else:
                target = self._busy_pct
            util = target + r.gauss(0.0, 1.5)
        self._util = min(100.0, max(0.0, util))
        mu = pins.get("memory_utilization")
        self._mem_util = float(mu) if mu is not None else min(
            100.0, max(0.0, 0.52 * self._util + r.gauss(0.0, 1.5)))

        if "power" in pins:
            p = float(pins["power"])
        else:
            p = self.idle_power_w + (self.max_power_w - self.idle_power_w) * self._util / 100.0
            p = min(max(p + r.gauss(0.0, 6.0), 0.9 * self.idle_power_w), self.power_limit_w)
        self._power = p

        if "temperature" in pins:
            self._temp = float(pins["temperature"])
        else:
            eq = self.ambient_c + self.c_per_w * p
            self._temp += (eq - self._temp) * (1.0 - math.exp(-dt / self._tau_s))

        if "memory_used" in pins:
            m = float(pins["memory_used"])
        else:
            context = 530 * _MIB  # CUDA context + driver reservations
            if self.workload == "idle":
                m = 0.0 if e < self._startup_s else context
            elif e < self._startup_s:
                m = context * min(1.0, e / max(self._startup_s, 1e-9))
            else:
                frac = min(1.0, (e - self._startup_s) / self._ramp_s)
                target = self._mem_fraction * self.memory_total
                m = context + (target - context) * frac
                m *= 1.0 + r.gauss(0.0, 0.002)  # caching allocator breathing
            m = (int(m) // (2 * _MIB)) * (2 * _MIB)
        self._mem_used = min(max(m, 0.0), float(self.memory_total))

        reasons = 0
        if self._util <= 3.0:
            sm = float(self.sm_clock_idle_mhz)
            reasons |= _P.nvmlClocksEventReasonGpuIdle
        else:
            sm = float(self.sm_clock_max_mhz)
            if p >= 0.985 * self.power_limit_w:
                reasons |= _P.nvmlClocksEventReasonSwPowerCap
                sm *= 0.93
        if self._temp >= self.slowdown_c:
            reasons |= _P.nvmlClocksEventReasonSwThermalSlowdown
            sm *= 0.85
        if self._temp >= self.hw_slowdown_c:
            reasons |= (_P.nvmlClocksEventReasonHwThermalSlowdown
                        | _P.nvmlClocksEventReasonHwSlowdown)
            sm *= 0.6
        self._sm = int(round(sm / 15.0)) * 15  # SM clocks move in 15 MHz steps
        self._throttle = reasons

    def _check(self, function: str, feature: str | None) -> None:
        if self.lost:
            raise NVMLError_GpuIsLost()
        if feature is not None and feature in self.unsupported:
            raise NVMLError_NotSupported()
        f = self._failures.get(function)
        if f is not None:
            f[1] -= 1
            if f[1] <= 0:
                del self._failures[function]
            raise f[0]()

    def __repr__(self) -> str:
        return f"FakeGpu(index={self.index}, uuid={self.uuid!r}, name={self.name!r})"


def _missing_attribute(name: str) -> property:
    def getter(self: Any) -> Any:
        raise AttributeError(f"module 'pynvml' has no attribute {name!r}")
    return property(getter)


class _EventSet:
    __slots__ = ("address", "registrations", "queue", "cond")

    def __init__(self) -> None:
        self.address = next(_addresses)
        self.registrations: dict[int, int] = {}  # gpu address -> event type mask
        self.queue: deque = deque()
        self.cond = threading.Condition(_LOCK)


class FakeNvml:
    """Stands in for the ``pynvml`` module: pass it where the module is expected.

    ``devices``: the GPUs, in NVML index order. ``init_error``: an NVMLError class that
    ``nvmlInit`` raises (see ``library_not_found``). ``clock``: what the simulation reads for
    time, default ``time.monotonic`` (``ManualClock`` for deterministic tests).
    ``missing_functions``: names absent from these "older bindings" (AttributeError, as for an
    old pynvml). ``driver_missing_functions``: names whose symbol the "older driver" lacks
    (``NVMLError_FunctionNotFound``, as pynvml raises).
    """

    def __init__(
        self,
        devices: Sequence[FakeGpu] = (),
        *,
        init_error: type | None = None,
        clock: Callable[[], float] | None = None,
        missing_functions: Iterable[str] = (),
        driver_missing_functions: Iterable[str] = (),
        driver_version: str = "550.90.07",
    ) -> None:
        self.gpus: list[FakeGpu] = list(devices)
        self.calls: Counter = Counter()
        self.init_error = init_error
        self.driver_version = driver_version
        self._clock = clock or time.monotonic
        self._refcount = 0
        self._driver_missing = frozenset(driver_missing_functions)
        self._by_address: dict[int, Any] = {}
        self._event_sets: dict[int, _EventSet] = {}
        for i, g in enumerate(self.gpus):
            if g._owner is not None:
                raise ValueError(f"{g!r} already belongs to another FakeNvml")
            g._owner = self
            g.index = i
            if g.pci_bus_id is None:
                g.pci_bus_id = "00000000:%02X:00.0" % ((0x18 + 0x10 * i) % 0x100)
            self._by_address[g._address] = g
            for m in g._migs:
                self._by_address[m.address] = m
        if len({g.uuid for g in self.gpus}) != len(self.gpus):
            raise ValueError("FakeGpu uuids must be unique")
        missing = [n for n in missing_functions]
        for n in missing:
            if not hasattr(FakeNvml, n):
                raise ValueError(f"FakeNvml has no function {n!r}")
        if missing:
            self.__class__ = type("FakeNvmlOldBindings", (type(self),),
                                  {n: _missing_attribute(n) for n in missing})

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def library_not_found(cls) -> "FakeNvml":
        """A machine without the NVIDIA driver library: ``nvmlInit`` raises
        ``NVMLError_LibraryNotFound``."""
        return cls([], init_error=NVMLError_LibraryNotFound)

    @classmethod
    def driver_not_loaded(cls) -> "FakeNvml":
        """Library present, kernel module not loaded: ``NVMLError_DriverNotLoaded``."""
        return cls([], init_error=NVMLError_DriverNotLoaded)

    @classmethod
    def h100_node(
        cls,
        n_gpus: int = 8,
        node_seed: int | str = 0,
        *,
        clock: Callable[[], float] | None = None,
        **gpu_overrides: Any,
    ) -> "FakeNvml":
        """An HGX H100 node with ``n_gpus`` GPUs, deterministic in ``node_seed`` (give every
        simulated node its own seed: its GPU UUIDs and workload differ). ``gpu_overrides`` go to
        every ``FakeGpu`` (e.g. ``unsupported={"xid"}``, ``workload="idle"``)."""
        return cls([FakeGpu.h100(i, node_seed, **gpu_overrides) for i in range(n_gpus)], clock=clock)

    # ---- helpers for tests -----------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return self._refcount > 0

    def call_count(self, function: str, gpu: int | None = None) -> int:
        """Calls of ``function``; on GPU index ``gpu`` only when given."""
        if gpu is not None:
            return self.calls[(function, gpu)]
        return sum(n for (f, _), n in self.calls.items() if f == function)

    def open_event_sets(self) -> int:
        return len(self._event_sets)

    def __getitem__(self, index: int) -> FakeGpu:
        return self.gpus[index]

    # ---- internals -------------------------------------------------------------------------

    def _enter(self, function: str, gpu: int | None = None) -> None:
        self.calls[(function, gpu)] += 1
        if self._refcount <= 0:
            raise NVMLError_Uninitialized()
        if function in self._driver_missing:
            raise NVMLError_FunctionNotFound()

    def _gpu(self, function: str, handle: Any, feature: str | None = None) -> FakeGpu:
        obj = self._by_address.get(_address(handle))  # type: ignore[arg-type]
        index = obj.index if isinstance(obj, FakeGpu) else None
        self._enter(function, index)
        if obj is None:
            raise NVMLError_InvalidArgument()
        if isinstance(obj, _MigDevice):
            # MIG device handles answer identity queries only (see the nvmlDeviceGet* below).
            raise NVMLError_NotSupported()
        obj._check(function, feature)
        return obj

    def _any(self, function: str, handle: Any) -> Any:
        """A GPU or a MIG device."""
        obj = self._by_address.get(_address(handle))  # type: ignore[arg-type]
        gpu = obj.parent if isinstance(obj, _MigDevice) else obj
        self._enter(function, gpu.index if gpu is not None else None)
        if obj is None:
            raise NVMLError_InvalidArgument()
        gpu._check(function, None)
        return obj

    def _deliver(self, gpu: FakeGpu, event_type: int, data: int) -> None:
        for es in self._event_sets.values():
            if es.registrations.get(gpu._address, 0) & event_type:
                es.queue.append((gpu, event_type, data))
                es.cond.notify_all()

    def _event_set(self, function: str, eventSet: Any) -> _EventSet:
        self._enter(function)
        es = self._event_sets.get(_address(eventSet))  # type: ignore[arg-type]
        if es is None:
            raise NVMLError_InvalidArgument()
        return es

    # ---- pynvml surface: library -----------------------------------------------------------

    def nvmlInitWithFlags(self, flags):
        with _LOCK:
            self.calls[("nvmlInitWithFlags", None)] += 1
            if self.init_error is not None:
                raise self.init_error()
            self._refcount += 1
            return None

    def nvmlInit(self):
        with _LOCK:
            self.calls[("nvmlInit", None)] += 1
            if self.init_error is not None:
                raise self.init_error()
            self._refcount += 1
            return None

    def nvmlShutdown(self):
        with _LOCK:
            self._enter("nvmlShutdown")
            self._refcount -= 1
            return None

    def nvmlSystemGetDriverVersion(self):
        with _LOCK:
            self._enter("nvmlSystemGetDriverVersion")
            return self.driver_version

    def nvmlDeviceGetCount(self):
        with _LOCK:
            self._enter("nvmlDeviceGetCount")
            return len(self.gpus)

    # ---- handles and identity ----------------------------------------------------------------

    def nvmlDeviceGetHandleByIndex(self, index):
        with _LOCK:
            ok = isinstance(index, int) and 0 <= index < len(self.gpus)
            self._enter("nvmlDeviceGetHandleByIndex", index if ok else None)
            if not ok:
                raise NVMLError_InvalidArgument()
            return self.gpus[index].handle

    def nvmlDeviceGetHandleByUUID(self, uuid):
        with _LOCK:
            self._enter("nvmlDeviceGetHandleByUUID")
            u = _text(uuid)
            for obj in self._by_address.values():
                if obj.uuid == u:
                    return _handle(obj.address if isinstance(obj, _MigDevice) else obj._address)
            raise NVMLError_NotFound()

    def nvmlDeviceGetHandleByPciBusId(self, pciBusId):
        with _LOCK:
            self._enter("nvmlDeviceGetHandleByPciBusId")
            want = _text(pciBusId).upper()
            for g in self.gpus:
                bus = g.pci_bus_id or ""
                if want in (bus, bus[4:]):  # NVML also accepts the 4-digit domain form
                    return g.handle
            raise NVMLError_NotFound()

    def nvmlDeviceGetIndex(self, handle):
        with _LOCK:
            return self._gpu("nvmlDeviceGetIndex", handle).index

    def nvmlDeviceGetUUID(self, handle):
        with _LOCK:
            return self._any("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle):
        with _LOCK:
            obj = self._any("nvmlDeviceGetName", handle)
            if isinstance(obj, _MigDevice):
                return f"{obj.parent.name} MIG 1g.10gb"
            return obj.name

    def nvmlDeviceGetPciInfo_v3(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetPciInfo_v3", handle)
            return self._pci_info(g)

    def nvmlDeviceGetPciInfo(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetPciInfo", handle)
            return self._pci_info(g)

    @staticmethod
    def _pci_info(g: FakeGpu) -> Any:
        info = _P.nvmlPciInfo_t()
        bus_id = (g.pci_bus_id or "").encode()
        info.busId = bus_id
        info.busIdLegacy = bus_id[4:]
        parts = (g.pci_bus_id or "0:0:0.0").replace(".", ":").split(":")
        info.domain, info.bus, info.device = (int(parts[0], 16), int(parts[1], 16), int(parts[2], 16))
        info.pciDeviceId = g.pci_device_id
        info.pciSubSystemId = 0x16C110DE
        return info

    # ---- MIG ---------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetMigMode", device, "mig")
            mode = _P.NVML_DEVICE_MIG_ENABLE if g._migs else _P.NVML_DEVICE_MIG_DISABLE
            return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        with _LOCK:
            self._gpu("nvmlDeviceGetMaxMigDeviceCount", device, "mig")
            return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", device, "mig")
            if not g._migs:
                raise NVMLError_InvalidArgument()
            if not 0 <= index < len(g._migs):
                raise NVMLError_NotFound()
            return _handle(g._migs[index].address)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice):
        with _LOCK:
            obj = self._any("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
            if not isinstance(obj, _MigDevice):
                raise NVMLError_InvalidArgument()
            return obj.parent.handle

    def nvmlDeviceIsMigDeviceHandle(self, device):
        with _LOCK:
            obj = self._any("nvmlDeviceIsMigDeviceHandle", device)
            return ctypes.c_uint(1 if isinstance(obj, _MigDevice) else 0)  # pynvml returns c_uint

    # ---- readings ----------------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetMemoryInfo", handle, "memory")._now_state()
            used = int(g._mem_used)
            if not version:
                m = _P.c_nvmlMemory_t()
            else:
                if version != _P.nvmlMemory_v2:
                    raise NVMLError(_P.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
                m = _P.c_nvmlMemory_v2_t()
                m.version = version
                m.reserved = 0
            m.total = g.memory_total
            m.used = used
            m.free = g.memory_total - used
            return m

    def nvmlDeviceGetTemperature(self, handle, sensor):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetTemperature", handle, "temperature")
            if sensor != _P.NVML_TEMPERATURE_GPU:
                raise NVMLError_InvalidArgument()
            return int(round(g._now_state()._temp))

    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetFieldValues", handle)._now_state()
            values = (_P.c_nvmlFieldValue_t * len(fieldIds))()
            now_us = int(time.time() * 1e6)
            for i, fid in enumerate(fieldIds):
                try:
                    (values[i].fieldId, values[i].scopeId) = fid
                except TypeError:
                    values[i].fieldId = fid
                v = values[i]
                v.timestamp = now_us
                v.latencyUsec = 0
                if v.fieldId == _P.NVML_FI_DEV_MEMORY_TEMP and "memory_temperature" not in g.unsupported:
                    v.valueType = _P.NVML_VALUE_TYPE_UNSIGNED_INT
                    v.value.uiVal = int(round(g._temp + g.memory_temp_offset_c))
                    v.nvmlReturn = _P.NVML_SUCCESS
                else:
                    v.nvmlReturn = _P.NVML_ERROR_NOT_SUPPORTED
            return values

    def nvmlDeviceGetUtilizationRates(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetUtilizationRates", handle, "utilization")._now_state()
            u = _P.c_nvmlUtilization_t()
            u.gpu = int(round(g._util))
            u.memory = int(round(g._mem_util))
            return u

    def nvmlDeviceGetPowerUsage(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetPowerUsage", handle, "power")._now_state()
            return int(round(g._power * 1000.0))  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle, "power_limit")
            return int(round(g.power_limit_w * 1000.0))

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetPowerManagementLimit", handle, "power_limit")
            return int(round(g.power_limit_w * 1000.0))

    def nvmlDeviceGetClockInfo(self, handle, type):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetClockInfo", handle, "clocks")._now_state()
            if type in (_P.NVML_CLOCK_GRAPHICS, _P.NVML_CLOCK_SM):
                return int(g._sm)
            if type == _P.NVML_CLOCK_MEM:
                return g.memory_clock_mhz
            if type == _P.NVML_CLOCK_VIDEO:
                return int(g._sm * 0.9)
            raise NVMLError_InvalidArgument()

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle, "throttle_reasons")
            g._now_state()
            return int(g._pins.get("throttle_reasons", g._throttle))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle, "throttle_reasons")
            g._now_state()
            return int(g._pins.get("throttle_reasons", g._throttle))

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetTotalEccErrors", handle, "ecc")
            if counterType not in (_P.NVML_VOLATILE_ECC, _P.NVML_AGGREGATE_ECC):
                raise NVMLError_InvalidArgument()
            if errorType == _P.NVML_MEMORY_ERROR_TYPE_CORRECTED:
                return g.ecc_corrected
            if errorType == _P.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
                return g.ecc_uncorrected
            raise NVMLError_InvalidArgument()

    # ---- events ------------------------------------------------------------------------------

    def nvmlEventSetCreate(self):
        with _LOCK:
            self._enter("nvmlEventSetCreate")
            es = _EventSet()
            self._event_sets[es.address] = es
            return _handle(es.address, _P.c_nvmlEventSet_t)

    def nvmlDeviceGetSupportedEventTypes(self, handle):
        with _LOCK:
            g = self._gpu("nvmlDeviceGetSupportedEventTypes", handle)
            return self._supported_events(g)

    @staticmethod
    def _supported_events(g: FakeGpu) -> int:
        mask = _P.nvmlEventTypePState | _P.nvmlEventTypeClock
        if "xid" not in g.unsupported:
            mask |= _P.nvmlEventTypeXidCriticalError
        if "ecc" not in g.unsupported:
            mask |= _P.nvmlEventTypeSingleBitEccError | _P.nvmlEventTypeDoubleBitEccError
        return mask

    def nvmlDeviceRegisterEvents(self, handle, eventTypes, eventSet):
        with _LOCK:
            g = self._gpu("nvmlDeviceRegisterEvents", handle)
            es = self._event_sets.get(_address(eventSet))  # type: ignore[arg-type]
            if es is None:
                raise NVMLError_InvalidArgument()
            if eventTypes & ~self._supported_events(g):
                raise NVMLError_NotSupported()
            es.registrations[g._address] = es.registrations.get(g._address, 0) | int(eventTypes)
            return None

    def nvmlEventSetWait_v2(self, eventSet, timeoutms):
        with _LOCK:
            es = self._event_set("nvmlEventSetWait_v2", eventSet)
            if not es.queue and timeoutms > 0:
                es.cond.wait_for(lambda: bool(es.queue), timeout=timeoutms / 1000.0)
            if not es.queue:
                raise NVMLError_Timeout()
            gpu, event_type, data = es.queue.popleft()
            ev = _P.c_nvmlEventData_t()
            ev.device = gpu.handle
            ev.eventType = event_type
            ev.eventData = data
            ev.gpuInstanceId = _NO_INSTANCE
            ev.computeInstanceId = _NO_INSTANCE
            return ev

    def nvmlEventSetWait(self, eventSet, timeoutms):
        with _LOCK:
            self.calls[("nvmlEventSetWait", None)] += 1
            return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet):
        with _LOCK:
            es = self._event_set("nvmlEventSetFree", eventSet)
            del self._event_sets[es.address]
            return None


# The module's constants and exception classes, copied so they are pynvml's own values.
for _name, _value in vars(pynvml).items():
    if _name.startswith("NVMLError") and isinstance(_value, type):
        setattr(FakeNvml, _name, _value)
    elif isinstance(_value, int) and _name.startswith((
            "NVML_", "nvmlEventType", "nvmlClocksEventReason", "nvmlClocksThrottleReason",
            "nvmlMemory_v", "nvmlTemperature_v")):
        if not hasattr(FakeNvml, _name):
            setattr(FakeNvml, _name, _value)
del _name, _value

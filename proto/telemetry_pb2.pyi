from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Identity(_message.Message):
    __slots__ = ("project", "run_id", "rank", "local_rank", "node_rank", "world_size", "host", "pid", "stream_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    run_id: str
    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    host: str
    pid: int
    stream_id: str
    def __init__(self, project: _Optional[str] = ..., run_id: _Optional[str] = ..., rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., node_rank: _Optional[int] = ..., world_size: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("seq", "identity", "run_start", "metrics", "gpu", "params", "tags", "run_end")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    RUN_START_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RUN_END_FIELD_NUMBER: _ClassVar[int]
    seq: int
    identity: Identity
    run_start: RunStart
    metrics: MetricBatch
    gpu: GpuBatch
    params: Params
    tags: Tags
    run_end: RunEnd
    def __init__(self, seq: _Optional[int] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., run_start: _Optional[_Union[RunStart, _Mapping]] = ..., metrics: _Optional[_Union[MetricBatch, _Mapping]] = ..., gpu: _Optional[_Union[GpuBatch, _Mapping]] = ..., params: _Optional[_Union[Params, _Mapping]] = ..., tags: _Optional[_Union[Tags, _Mapping]] = ..., run_end: _Optional[_Union[RunEnd, _Mapping]] = ...) -> None: ...

class RunStart(_message.Message):
    __slots__ = ("name", "start_time_ns", "git_commit", "params", "tags", "launcher")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    GIT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    name: str
    start_time_ns: int
    git_commit: str
    params: _containers.ScalarMap[str, str]
    tags: _containers.ScalarMap[str, str]
    launcher: str
    def __init__(self, name: _Optional[str] = ..., start_time_ns: _Optional[int] = ..., git_commit: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., launcher: _Optional[str] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("names", "name_index", "steps", "timestamps_ns", "values")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    name_index: bytes
    steps: bytes
    timestamps_ns: bytes
    values: bytes
    def __init__(self, names: _Optional[_Iterable[str]] = ..., name_index: _Optional[bytes] = ..., steps: _Optional[bytes] = ..., timestamps_ns: _Optional[bytes] = ..., values: _Optional[bytes] = ...) -> None: ...

class GpuBatch(_message.Message):
    __slots__ = ("gpu_uuids", "pci_bus_ids", "gpu_indexes", "gpu_names", "gpu_ref", "timestamps_ns", "memory_used_bytes", "memory_total_bytes", "temperature_c", "memory_temperature_c", "gpu_utilization_pct", "memory_utilization_pct", "power_w", "power_limit_w", "sm_clock_mhz", "memory_clock_mhz", "throttle_reasons", "ecc_corrected", "ecc_uncorrected", "xid")
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_IDS_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEXES_FIELD_NUMBER: _ClassVar[int]
    GPU_NAMES_FIELD_NUMBER: _ClassVar[int]
    GPU_REF_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_PCT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_UTILIZATION_PCT_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    pci_bus_ids: _containers.RepeatedScalarFieldContainer[str]
    gpu_indexes: _containers.RepeatedScalarFieldContainer[int]
    gpu_names: _containers.RepeatedScalarFieldContainer[str]
    gpu_ref: _containers.RepeatedScalarFieldContainer[int]
    timestamps_ns: _containers.RepeatedScalarFieldContainer[int]
    memory_used_bytes: _containers.RepeatedScalarFieldContainer[float]
    memory_total_bytes: _containers.RepeatedScalarFieldContainer[float]
    temperature_c: _containers.RepeatedScalarFieldContainer[float]
    memory_temperature_c: _containers.RepeatedScalarFieldContainer[float]
    gpu_utilization_pct: _containers.RepeatedScalarFieldContainer[float]
    memory_utilization_pct: _containers.RepeatedScalarFieldContainer[float]
    power_w: _containers.RepeatedScalarFieldContainer[float]
    power_limit_w: _containers.RepeatedScalarFieldContainer[float]
    sm_clock_mhz: _containers.RepeatedScalarFieldContainer[float]
    memory_clock_mhz: _containers.RepeatedScalarFieldContainer[float]
    throttle_reasons: _containers.RepeatedScalarFieldContainer[int]
    ecc_corrected: _containers.RepeatedScalarFieldContainer[float]
    ecc_uncorrected: _containers.RepeatedScalarFieldContainer[float]
    xid: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gpu_uuids: _Optional[_Iterable[str]] = ..., pci_bus_ids: _Optional[_Iterable[str]] = ..., gpu_indexes: _Optional[_Iterable[int]] = ..., gpu_names: _Optional[_Iterable[str]] = ..., gpu_ref: _Optional[_Iterable[int]] = ..., timestamps_ns: _Optional[_Iterable[int]] = ..., memory_used_bytes: _Optional[_Iterable[float]] = ..., memory_total_bytes: _Optional[_Iterable[float]] = ..., temperature_c: _Optional[_Iterable[float]] = ..., memory_temperature_c: _Optional[_Iterable[float]] = ..., gpu_utilization_pct: _Optional[_Iterable[float]] = ..., memory_utilization_pct: _Optional[_Iterable[float]] = ..., power_w: _Optional[_Iterable[float]] = ..., power_limit_w: _Optional[_Iterable[float]] = ..., sm_clock_mhz: _Optional[_Iterable[float]] = ..., memory_clock_mhz: _Optional[_Iterable[float]] = ..., throttle_reasons: _Optional[_Iterable[int]] = ..., ecc_corrected: _Optional[_Iterable[float]] = ..., ecc_uncorrected: _Optional[_Iterable[float]] = ..., xid: _Optional[_Iterable[int]] = ...) -> None: ...

class Params(_message.Message):
    __slots__ = ("params",)
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: _containers.ScalarMap[str, str]
    def __init__(self, params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Tags(_message.Message):
    __slots__ = ("tags",)
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.ScalarMap[str, str]
    def __init__(self, tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RunEnd(_message.Message):
    __slots__ = ("end_time_ns", "exit_code", "summary")
    class SummaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    END_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    end_time_ns: int
    exit_code: int
    summary: _containers.ScalarMap[str, float]
    def __init__(self, end_time_ns: _Optional[int] = ..., exit_code: _Optional[int] = ..., summary: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "code", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: str
    message: str
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_STATUS_UNSPECIFIED: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_RUNNING: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_PAUSED: _ClassVar[SandboxStatus]
SANDBOX_STATUS_UNSPECIFIED: SandboxStatus
SANDBOX_STATUS_RUNNING: SandboxStatus
SANDBOX_STATUS_PAUSED: SandboxStatus

class Capabilities(_message.Message):
    __slots__ = ("pause", "snapshot", "fork", "egress_rules", "no_internet", "isolation", "header_rules", "egress_proxy", "builds", "volumes", "filesystem_pause")
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    EGRESS_RULES_FIELD_NUMBER: _ClassVar[int]
    NO_INTERNET_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    HEADER_RULES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_FIELD_NUMBER: _ClassVar[int]
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_PAUSE_FIELD_NUMBER: _ClassVar[int]
    pause: bool
    snapshot: bool
    fork: bool
    egress_rules: bool
    no_internet: bool
    isolation: bool
    header_rules: bool
    egress_proxy: bool
    builds: bool
    volumes: bool
    filesystem_pause: bool
    def __init__(self, pause: _Optional[bool] = ..., snapshot: _Optional[bool] = ..., fork: _Optional[bool] = ..., egress_rules: _Optional[bool] = ..., no_internet: _Optional[bool] = ..., isolation: _Optional[bool] = ..., header_rules: _Optional[bool] = ..., egress_proxy: _Optional[bool] = ..., builds: _Optional[bool] = ..., volumes: _Optional[bool] = ..., filesystem_pause: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("node_id", "runtime", "capabilities", "envd_version", "pools")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    runtime: str
    capabilities: Capabilities
    envd_version: str
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    def __init__(self, node_id: _Optional[str] = ..., runtime: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., envd_version: _Optional[str] = ..., pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("template_id", "cpu_count", "memory_mb", "disk_mb", "ready", "target")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_MB_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    cpu_count: int
    memory_mb: int
    disk_mb: int
    ready: int
    target: int
    def __init__(self, template_id: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_mb: _Optional[int] = ..., ready: _Optional[int] = ..., target: _Optional[int] = ...) -> None: ...

class SandboxSpec(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "cpu_count", "memory_mb", "disk_mb", "env_vars", "access_token", "allow_internet", "snapshot", "allow_out", "deny_out", "volume_mounts", "header_rules", "egress_proxy")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_MB_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_INTERNET_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_FIELD_NUMBER: _ClassVar[int]
    DENY_OUT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    HEADER_RULES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    cpu_count: int
    memory_mb: int
    disk_mb: int
    env_vars: _containers.ScalarMap[str, str]
    access_token: str
    allow_internet: bool
    snapshot: Snapshot
    allow_out: _containers.RepeatedScalarFieldContainer[str]
    deny_out: _containers.RepeatedScalarFieldContainer[str]
    volume_mounts: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    header_rules: _containers.RepeatedCompositeFieldContainer[HeaderRule]
    egress_proxy: EgressProxy
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_mb: _Optional[int] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., access_token: _Optional[str] = ..., allow_internet: _Optional[bool] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., allow_out: _Optional[_Iterable[str]] = ..., deny_out: _Optional[_Iterable[str]] = ..., volume_mounts: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., header_rules: _Optional[_Iterable[_Union[HeaderRule, _Mapping]]] = ..., egress_proxy: _Optional[_Union[EgressProxy, _Mapping]] = ...) -> None: ...

class EgressProxy(_message.Message):
    __slots__ = ("host", "port", "username", "password")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    username: str
    password: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class HeaderRule(_message.Message):
    __slots__ = ("domain", "headers", "unresolved")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVED_FIELD_NUMBER: _ClassVar[int]
    domain: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    unresolved: bool
    def __init__(self, domain: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., unresolved: _Optional[bool] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class VolumeMount(_message.Message):
    __slots__ = ("path", "volume_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    volume_id: str
    def __init__(self, path: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("snapshot_id", "runtime", "path", "template_id", "access_token", "size_bytes", "filesystem_only")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    runtime: str
    path: str
    template_id: str
    access_token: str
    size_bytes: int
    filesystem_only: bool
    def __init__(self, snapshot_id: _Optional[str] = ..., runtime: _Optional[str] = ..., path: _Optional[str] = ..., template_id: _Optional[str] = ..., access_token: _Optional[str] = ..., size_bytes: _Optional[int] = ..., filesystem_only: _Optional[bool] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "envd_url", "host", "envd_version", "status", "paused_bytes", "files_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ENVD_URL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    envd_url: str
    host: str
    envd_version: str
    status: SandboxStatus
    paused_bytes: int
    files_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., envd_url: _Optional[str] = ..., host: _Optional[str] = ..., envd_version: _Optional[str] = ..., status: _Optional[_Union[SandboxStatus, str]] = ..., paused_bytes: _Optional[int] = ..., files_only: _Optional[bool] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: SandboxSpec
    def __init__(self, spec: _Optional[_Union[SandboxSpec, _Mapping]] = ...) -> None: ...

class CreateResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class KillRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class KillResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EndedSandbox(_message.Message):
    __slots__ = ("sandbox_id", "reason")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    reason: str
    def __init__(self, sandbox_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("sandboxes", "ended", "boot_id")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    ended: _containers.RepeatedCompositeFieldContainer[EndedSandbox]
    boot_id: str
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ..., ended: _Optional[_Iterable[_Union[EndedSandbox, _Mapping]]] = ..., boot_id: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("cpu_count", "cpu_used_pct", "mem_used", "mem_total", "disk_used", "disk_total")
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_USED_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int
    def __init__(self, cpu_count: _Optional[int] = ..., cpu_used_pct: _Optional[float] = ..., mem_used: _Optional[int] = ..., mem_total: _Optional[int] = ..., disk_used: _Optional[int] = ..., disk_total: _Optional[int] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("sandbox_id", "filesystem_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    filesystem_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., filesystem_only: _Optional[bool] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("size_bytes",)
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    def __init__(self, size_bytes: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("sandbox_id", "reboot", "access_token")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    reboot: bool
    access_token: str
    def __init__(self, sandbox_id: _Optional[str] = ..., reboot: _Optional[bool] = ..., access_token: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("sandbox", "rebooted")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    REBOOTED_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    rebooted: bool
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., rebooted: _Optional[bool] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("sandbox_id", "snapshot_id", "filesystem_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    snapshot_id: str
    filesystem_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., filesystem_only: _Optional[bool] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("sandbox_id", "snapshot")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    snapshot: Snapshot
    def __init__(self, sandbox_id: _Optional[str] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: SandboxSpec
    def __init__(self, spec: _Optional[_Union[SandboxSpec, _Mapping]] = ...) -> None: ...

class ClaimResponse(_message.Message):
    __slots__ = ("sandbox", "access_token")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    access_token: str
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., access_token: _Optional[str] = ...) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("sandbox_id", "allow_internet", "allow_out", "deny_out", "header_rules", "access_token", "egress_proxy")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_INTERNET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_FIELD_NUMBER: _ClassVar[int]
    DENY_OUT_FIELD_NUMBER: _ClassVar[int]
    HEADER_RULES_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PROXY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    allow_internet: bool
    allow_out: _containers.RepeatedScalarFieldContainer[str]
    deny_out: _containers.RepeatedScalarFieldContainer[str]
    header_rules: _containers.RepeatedCompositeFieldContainer[HeaderRule]
    access_token: str
    egress_proxy: EgressProxy
    def __init__(self, sandbox_id: _Optional[str] = ..., allow_internet: _Optional[bool] = ..., allow_out: _Optional[_Iterable[str]] = ..., deny_out: _Optional[_Iterable[str]] = ..., header_rules: _Optional[_Iterable[_Union[HeaderRule, _Mapping]]] = ..., access_token: _Optional[str] = ..., egress_proxy: _Optional[_Union[EgressProxy, _Mapping]] = ...) -> None: ...

class UpdateNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EgressLogRequest(_message.Message):
    __slots__ = ("sandbox_id", "after", "limit")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    after: int
    limit: int
    def __init__(self, sandbox_id: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class EgressRecord(_message.Message):
    __slots__ = ("seq", "at", "ended", "protocol", "name", "ip", "port", "method", "path", "bytes_out", "bytes_in", "verdict", "rule")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    ended: float
    protocol: str
    name: str
    ip: str
    port: int
    method: str
    path: str
    bytes_out: int
    bytes_in: int
    verdict: str
    rule: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., ended: _Optional[float] = ..., protocol: _Optional[str] = ..., name: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., bytes_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., verdict: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class EgressLogResponse(_message.Message):
    __slots__ = ("records", "next")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[EgressRecord]
    next: int
    def __init__(self, records: _Optional[_Iterable[_Union[EgressRecord, _Mapping]]] = ..., next: _Optional[int] = ...) -> None: ...

class BuildFilesRequest(_message.Message):
    __slots__ = ("template_id", "files_hashes")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    FILES_HASHES_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    files_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, template_id: _Optional[str] = ..., files_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class BuildFilesResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing: _Optional[_Iterable[str]] = ...) -> None: ...

class PutBuildFileRequest(_message.Message):
    __slots__ = ("template_id", "files_hash", "offset", "data", "last")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    FILES_HASH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    files_hash: str
    offset: int
    data: bytes
    last: bool
    def __init__(self, template_id: _Optional[str] = ..., files_hash: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class PutBuildFileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistryLogin(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class BuildStep(_message.Message):
    __slots__ = ("type", "args", "files_hash", "force")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    FILES_HASH_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    args: _containers.RepeatedScalarFieldContainer[str]
    files_hash: str
    force: bool
    def __init__(self, type: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., files_hash: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class StartBuildRequest(_message.Message):
    __slots__ = ("build_id", "template_id", "store_name", "label", "from_template", "from_image", "registry", "steps", "start_cmd", "ready_cmd", "force", "memory_mb")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FROM_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    FROM_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    START_CMD_FIELD_NUMBER: _ClassVar[int]
    READY_CMD_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    template_id: str
    store_name: str
    label: str
    from_template: str
    from_image: str
    registry: RegistryLogin
    steps: _containers.RepeatedCompositeFieldContainer[BuildStep]
    start_cmd: str
    ready_cmd: str
    force: bool
    memory_mb: int
    def __init__(self, build_id: _Optional[str] = ..., template_id: _Optional[str] = ..., store_name: _Optional[str] = ..., label: _Optional[str] = ..., from_template: _Optional[str] = ..., from_image: _Optional[str] = ..., registry: _Optional[_Union[RegistryLogin, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[BuildStep, _Mapping]]] = ..., start_cmd: _Optional[str] = ..., ready_cmd: _Optional[str] = ..., force: _Optional[bool] = ..., memory_mb: _Optional[int] = ...) -> None: ...

class StartBuildResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BuildStatusRequest(_message.Message):
    __slots__ = ("build_id", "from_seq")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    from_seq: int
    def __init__(self, build_id: _Optional[str] = ..., from_seq: _Optional[int] = ...) -> None: ...

class BuildLogLine(_message.Message):
    __slots__ = ("seq", "at", "level", "message", "step")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    level: str
    message: str
    step: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., level: _Optional[str] = ..., message: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class BuildStatusResponse(_message.Message):
    __slots__ = ("status", "lines", "reason", "reason_step")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_STEP_FIELD_NUMBER: _ClassVar[int]
    status: str
    lines: _containers.RepeatedCompositeFieldContainer[BuildLogLine]
    reason: str
    reason_step: str
    def __init__(self, status: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[BuildLogLine, _Mapping]]] = ..., reason: _Optional[str] = ..., reason_step: _Optional[str] = ...) -> None: ...

class CancelBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class CancelBuildResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("template_id", "store_names")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_NAMES_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    store_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, template_id: _Optional[str] = ..., store_names: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteTemplateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "size_mb")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    size_mb: int
    def __init__(self, volume_id: _Optional[str] = ..., size_mb: _Optional[int] = ...) -> None: ...

class CreateVolumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteVolumeRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class DeleteVolumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumeEntry(_message.Message):
    __slots__ = ("name", "type", "path", "size", "mode", "uid", "gid", "atime", "mtime", "ctime", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ATIME_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    CTIME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    atime: float
    mtime: float
    ctime: float
    target: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., atime: _Optional[float] = ..., mtime: _Optional[float] = ..., ctime: _Optional[float] = ..., target: _Optional[str] = ...) -> None: ...

class VolumePathRequest(_message.Message):
    __slots__ = ("volume_id", "path")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    path: str
    def __init__(self, volume_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class VolumeListRequest(_message.Message):
    __slots__ = ("volume_id", "path", "depth")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    path: str
    depth: int
    def __init__(self, volume_id: _Optional[str] = ..., path: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class VolumeListResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[VolumeEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[VolumeEntry, _Mapping]]] = ...) -> None: ...

class VolumeOwner(_message.Message):
    __slots__ = ("uid", "gid", "mode")
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    uid: int
    gid: int
    mode: int
    def __init__(self, uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class VolumeChangeRequest(_message.Message):
    __slots__ = ("volume_id", "path", "owner", "parents")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    path: str
    owner: VolumeOwner
    parents: bool
    def __init__(self, volume_id: _Optional[str] = ..., path: _Optional[str] = ..., owner: _Optional[_Union[VolumeOwner, _Mapping]] = ..., parents: _Optional[bool] = ...) -> None: ...

class VolumeEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: VolumeEntry
    def __init__(self, entry: _Optional[_Union[VolumeEntry, _Mapping]] = ...) -> None: ...

class VolumeRemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumeReadRequest(_message.Message):
    __slots__ = ("volume_id", "path", "offset", "length", "read_id", "done")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    path: str
    offset: int
    length: int
    read_id: str
    done: bool
    def __init__(self, volume_id: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., read_id: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class VolumeReadResponse(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class VolumeWriteRequest(_message.Message):
    __slots__ = ("volume_id", "path", "write_id", "offset", "data", "last", "abort", "owner", "parents")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    path: str
    write_id: str
    offset: int
    data: bytes
    last: bool
    abort: bool
    owner: VolumeOwner
    parents: bool
    def __init__(self, volume_id: _Optional[str] = ..., path: _Optional[str] = ..., write_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., abort: _Optional[bool] = ..., owner: _Optional[_Union[VolumeOwner, _Mapping]] = ..., parents: _Optional[bool] = ...) -> None: ...

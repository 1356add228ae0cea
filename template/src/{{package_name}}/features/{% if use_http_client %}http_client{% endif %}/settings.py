"""The http_client feature's settings: the upstream service and the shared client's limits."""

from pydantic import Field

from ...settings_base import SettingsBase


class HttpClientSettings(SettingsBase):
    upstream_base_url: str = "https://httpbin.org"
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=10.0, gt=0)
    upstream_write_timeout: float = Field(default=10.0, gt=0)
    upstream_pool_timeout: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=100, ge=1)
    upstream_max_keepalive_connections: int = Field(default=100, ge=0)

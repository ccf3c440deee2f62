"""Every doctor check, grouped by area; importing this package registers them."""

from mn_node.doctor.checks import config, drain, host, local, peers, redis, redis_ha

__all__ = ["config", "drain", "host", "local", "peers", "redis", "redis_ha"]

"""The environment of an install, read for the settings: typed readers with working defaults,
each refusing a bad value with one line naming the variable, the value and what is allowed,
and the install's own secret key.

Needs no Django set-up (only its ImproperlyConfigured, which manage.py prints as one line):
opscenter/settings.py imports it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from scheduler.limits import BOUNDS, env_name, parse_bool


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} {exc}.") from None


def env_number(key: str, default: float | int) -> float | int:
    """OPSCENTER_<KEY> within the bounds the node's options share (scheduler/limits.py)."""
    name = env_name(key)
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return BOUNDS[key].parse(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} {exc}.") from None


def env_int(name: str, default: int, low: int, high: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ImproperlyConfigured(f"{name}={value!r}: allowed is a whole number from {low} "
                                   f"to {high}.")
    return number


def env_networks(name: str, default: str) -> tuple:
    """Comma-separated IP addresses or networks (CIDR); empty: none."""
    value = os.environ.get(name, default)
    networks = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r}: {item!r} is not an IP address or "
                                       "network: use e.g. 127.0.0.1,::1,10.0.0.0/8.") from None
    return tuple(networks)


def install_secret_key(var_dir: Path) -> str:
    """This install's own key, kept in var/secret-key (mode 0600) and made on first use.

    Every node and the web process of one install read the same file. The key is written to a
    private temporary file and then linked into place, which fails if the file exists: of two
    processes starting together one wins and the other reads the winner's complete key."""
    path = var_dir / "secret-key"
    if not path.exists():
        try:
            var_dir.mkdir(parents=True, exist_ok=True)
            tmp = var_dir / f".secret-key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(50) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another process was first: use its key
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise ImproperlyConfigured(f"cannot create the secret key file {path} ({exc}): set "
                                       "SECRET_KEY, or OPSCENTER_VAR_DIR to a writable "
                                       "directory.") from None
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"cannot read the secret key file {path} ({exc}): set "
                                   "SECRET_KEY or fix the file's owner.") from None
    if len(key) < 32:
        raise ImproperlyConfigured(f"the secret key file {path} holds no usable key: delete it "
                                   "to have a new one made, or set SECRET_KEY.")
    return key

"""A network namespace joined to the root one by veth links that a test can cut or slow.

Each link is a veth pair with a private /30 of 10.200.0.0/16: `root_ip` on the
root side, `inner_ip` inside the namespace. A process run with `exec_prefix`
lives in the namespace and reaches the root namespace only over these links.

Faults are nftables rules on the link's inner device, at its ingress and
egress hooks: packets the stack has sent are dropped on the wire, as a cable
or a switch would, both ways. `partition` drops every packet (connections
stall, unbroken), `lose` drops a share of them at random, `heal` removes
either. The rules live in the test's namespace, so nothing outside it changes.
(`tc netem` would also do, and delay too, but not every kernel has it; a test
that wants delay holds the bytes in its forwarder, `tests/e2e/forward.py`.)
Everything is made by the test and removed by `close`.

Making a namespace needs root, iproute2 and nftables (`make test` installs
them). Without them the tests skip with the reason, and fail instead where
BROKER_REQUIRE_NETNS=1 (CI).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

import pytest

REQUIRE_NETNS_ENV = "BROKER_REQUIRE_NETNS"
COMMAND_TIMEOUT_S = 10.0
#: Tries at a free 10.200.N.0/24 for the links.
SUBNET_TRIES = 20


class NetnsError(RuntimeError):
    """An `ip` or `nft` command failed."""


def _run(*command: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


@dataclass(frozen=True)
class Link:
    """One veth pair between the root namespace and the test's namespace."""

    namespace: str
    root_dev: str
    inner_dev: str
    root_ip: str
    inner_ip: str

    @property
    def _table(self) -> str:
        return f"fault_{self.inner_dev}"

    def _drop(self, rule: str) -> None:
        """Replace the link's fault with `rule` at its inner device's ingress and egress."""
        table = self._table
        script = (
            f"add table netdev {table}\n"
            f"delete table netdev {table}\n"
            f"table netdev {table} {{\n"
            f"  chain ingress {{ type filter hook ingress device {self.inner_dev} priority 0;"
            f" {rule}; }}\n"
            f"  chain egress {{ type filter hook egress device {self.inner_dev} priority 0;"
            f" {rule}; }}\n"
            "}\n"
        )
        _run("ip", "netns", "exec", self.namespace, "nft", "-f", "-", stdin=script)

    def partition(self) -> None:
        """Drop every packet both ways: the connections over the link stall, unbroken."""
        self._drop("drop")

    def lose(self, percent: int) -> None:
        """Drop `percent` % of the packets each way, at random."""
        self._drop(f"numgen random mod 100 < {percent} drop")

    def heal(self) -> None:
        """Remove the fault: packets flow freely again."""
        subprocess.run(
            (
                "ip",
                "netns",
                "exec",
                self.namespace,
                "nft",
                "delete",
                "table",
                "netdev",
                self._table,
            ),
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def faults(self) -> str:
        """The rules in the namespace, as `nft` lists them."""
        return _run("ip", "netns", "exec", self.namespace, "nft", "list", "ruleset")


class Namespace:
    """A network namespace `ebtest-<random>` with its loopback up and some veth links."""

    def __init__(self) -> None:
        self._tag = secrets.token_hex(3)
        self.name = f"ebtest-{self._tag}"
        self.links: list[Link] = []
        self._subnet = _free_subnet()
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
        except NetnsError:
            self.close()
            raise

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def add_link(self) -> Link:
        """A new veth pair with the next /30 of the namespace's subnet."""
        index = len(self.links)
        base = 4 * index
        link = Link(
            namespace=self.name,
            root_dev=f"eb{self._tag}{index}r",
            inner_dev=f"eb{self._tag}{index}n",
            root_ip=f"10.200.{self._subnet}.{base + 1}",
            inner_ip=f"10.200.{self._subnet}.{base + 2}",
        )
        _run(
            "ip", "link", "add", link.root_dev, "type", "veth",
            "peer", "name", link.inner_dev, "netns", self.name,
        )  # fmt: skip
        self.links.append(link)
        _run("ip", "addr", "add", f"{link.root_ip}/30", "dev", link.root_dev)
        _run("ip", "link", "set", link.root_dev, "up")
        _run("ip", "-n", self.name, "addr", "add", f"{link.inner_ip}/30", "dev", link.inner_dev)
        _run("ip", "-n", self.name, "link", "set", link.inner_dev, "up")
        return link

    def close(self) -> None:
        """Remove the links, their qdiscs and the namespace; safe to call twice."""
        for link in self.links:
            subprocess.run(
                ("ip", "link", "del", link.root_dev),
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        self.links = []
        subprocess.run(
            ("ip", "netns", "del", self.name),
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )


def _free_subnet() -> int:
    """A third octet N such that no interface has an address in 10.200.N.0/24."""
    used = _run("ip", "-4", "-o", "addr", "show")
    for _ in range(SUBNET_TRIES):
        candidate = 1 + secrets.randbelow(254)
        if f"10.200.{candidate}." not in used:
            return candidate
    raise NetnsError("no free 10.200.N.0/24 for the test's links")


def namespace_or_skip(link_count: int) -> Namespace:
    """A new namespace with `link_count` links that take faults, or a skip.

    Where BROKER_REQUIRE_NETNS=1 (CI), what would skip fails instead.
    """
    reason = _missing()
    namespace = None
    if reason is None:
        try:
            namespace = Namespace()
            for _ in range(link_count):
                namespace.add_link()
            namespace.links[0].partition()  # nftables and its netdev hooks are there
            namespace.links[0].heal()
        except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
            reason = f"cannot make a network namespace with faultable links: {error}"
            if namespace is not None:
                namespace.close()
                namespace = None
    if namespace is None:
        message = reason or "no network namespace"
        if os.environ.get(REQUIRE_NETNS_ENV) == "1":
            pytest.fail(f"{REQUIRE_NETNS_ENV}=1 but {message}")
        pytest.skip(message)
    return namespace


def _missing() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (the partition tests run as root in CI)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the partition tests need `{tool}` from {package} (make test installs it)"
    return None

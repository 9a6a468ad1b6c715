"""Pieces of nft syntax that the sensor's and the watch's commands share (pure): the IP
families, dynamic sets, element lists and port ranges."""

from __future__ import annotations

from collections.abc import Iterable

# (IP version, nft's protocol word, nft's address type) of each family
FAMILIES = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))


def port_ranges(ports: Iterable[int]) -> list[str]:
    """Ports as nft set elements, runs joined: {22, 23, 24, 80} -> ['22-24', '80']."""
    found: list[str] = []
    ordered = sorted(set(ports))
    start = 0
    for index, port in enumerate(ordered):
        last = index + 1 == len(ordered) or ordered[index + 1] != port + 1
        if last:
            first = ordered[start]
            found.append(str(first) if first == port else f"{first}-{port}")
            start = index + 1
    return found


def nft_time(seconds: int) -> str:
    """Whole seconds as an nft time: '3600s', or above 8 digits in days and the rest,
    '3650d', '1157d9h46m40s'. nft (1.0.6) refuses more than 8 digits in one unit
    ('315360000s': "value too large"); days go up to the kernel's 213503 (584 years)."""
    if seconds < 100_000_000:
        return f"{seconds}s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    parts = zip((days, hours, minutes, rest), "dhms", strict=True)
    return "".join(f"{count}{unit}" for count, unit in parts if count)


def dynamic_set(where: str, name: str, kind: str, timeout: int, size: int) -> str:
    """A set the packet path fills (`update`), each element living `timeout` seconds (at
    least one) after its last refresh; full at `size`, when an update fails and ends its rule."""
    return (
        f"add set {where} {name} {{ type {kind}; flags dynamic,timeout; "
        f"timeout {nft_time(max(timeout, 1))}; size {size}; }}"
    )


def elements_command(verb: str, where: str, name: str, elements: list[str]) -> str:
    """`add element` or `delete element` of `elements`, in one command."""
    return f"{verb} element {where} {name} {{ {', '.join(elements)} }}"

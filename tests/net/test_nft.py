"""The nftables ruleset generator (pure), and applying it for real (root)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from virtkit.net import nft

RS = nft.Ruleset("virtkit_unittest", [nft.NetRules("vkbunit0", "10.99.1.0/24", True, False),
                                      nft.NetRules("vkbunit1", "10.99.2.0/24", False, True)],
                 [nft.PortRules("vkvunit1", "02:42:0a:63:01:02", "10.99.1.2")],
                 [nft.Forward("127.0.0.1", 8080, "tcp", "10.99.1.2", 80)])


def test_empty_ruleset_only_removes():
    cmds = nft.build(nft.Ruleset("virtkit_x"))
    assert [next(iter(c)) for c in cmds] == ["add", "delete", "add", "delete"]


def test_ruleset_is_replaced_whole():
    cmds = nft.build(RS)
    assert cmds[1] == {"delete": {"table": {"family": "inet", "name": "virtkit_unittest"}}}
    text = json.dumps(cmds)
    assert '"masquerade"' in text and '"dnat"' in text and "vkb*" in text and '"saddr ip"' in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nftables)")
def test_apply_and_remove_for_real():
    try:
        nft.apply(RS)
        listing = subprocess.run(["nft", "list", "table", "inet", "virtkit_unittest"], capture_output=True,
                                 text=True).stdout
        assert "dnat ip to 10.99.1.2:80" in listing and 'oifname != "vkbunit1" drop' in listing
        assert sorted(nft.table_exists("virtkit_unittest")) == ["bridge", "inet"]
        nft.apply(RS)                      # idempotent
    finally:
        nft.apply(nft.Ruleset("virtkit_unittest"))
    assert nft.table_exists("virtkit_unittest") == []

"""The VM console as users see it: the guest's output without printk lines or the exit marker."""

from virtkit.vm.qemu.console import ConsoleFilter


def test_kernel_lines_and_marker_are_dropped_across_chunk_boundaries():
    f = ConsoleFilter()
    out = f.feed(b"[    0.22] PCI: Fatal\nhel") + f.feed(b"lo\n[   1.0] re") + f.feed(b"boot: Power down\n")
    out += f.feed(b"virtkit-exit-status: 0\nlast") + f.flush()
    assert out == b"hello\nlast"


def test_carriage_returns_of_the_serial_tty_are_undone():
    f = ConsoleFilter()
    assert f.feed(b"a\r\nb\r\n") == b"a\nb\n"


def test_output_that_only_looks_similar_is_kept():
    f = ConsoleFilter()
    assert f.feed(b"[not a timestamp] x\n  [ 1.0] indented\n") == b"[not a timestamp] x\n  [ 1.0] indented\n"

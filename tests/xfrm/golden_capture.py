"""Regenerate tests/xfrm/golden/*.bin: the netlink requests iproute2 sends for each case.

Run as root from the repository root, with strace and iproute2 installed:
``.venv/bin/python -m tests.xfrm.golden_capture``.
Every case runs ``ip xfrm ...`` under ``strace -e write=all`` in a fresh network namespace
(``unshare -n``), so nothing touches the host's SAD/SPD; SA adds fail there without ESP, but the
request bytes are what we keep. Sequence number and port id are zeroed, as they differ per run.

Reply fixtures (``*.reply.bin``, kernel → user) come from ``read=all`` on the same runs after
``setup`` commands; they feed the decoding tests. Replies that need ESP (an SA dump) are
captured inside the test VM, which may only write where vmrun allows:

    bash hack/vm/vmrun --rwdir tests/xfrm/golden -- \
        .venv/bin/python -m tests.xfrm.golden_capture --vm
"""

from __future__ import annotations

import pathlib
import re
import shlex
import struct
import subprocess
import sys
import tempfile

from tests.xfrm.golden_cases import CASES, REPLIES, VM_REPLIES

GOLDEN = pathlib.Path(__file__).parent / 'golden'
HEXLINE = re.compile(r'^ \| [0-9a-f]{5}  ')


def buffers(trace: str, syscalls: tuple[str, ...]) -> list[bytes]:
    """The hex-dumped buffers of these syscalls in an ``strace -e write/read=all`` log."""
    out: list[bytes] = []
    current: bytearray | None = None
    for line in trace.splitlines():
        if line.startswith(' * '):  # " * 336 bytes in buffer 0"
            continue
        if not line.startswith(' |'):
            if current is not None:
                out.append(bytes(current))
            current = bytearray() if line.startswith(syscalls) else None
            continue
        if HEXLINE.match(line) and current is not None:
            current.extend(bytes.fromhex(line[10:59]))
    if current:
        out.append(bytes(current))
    return [b for b in out if b]


def normalize(msg: bytes) -> bytes:
    """Zero nlmsg_seq and nlmsg_pid: they differ per run."""
    return msg[:8] + bytes(8) + msg[16:]


def strace_ip(setup: list[str], args: str, syscalls: tuple[str, ...]) -> list[bytes]:
    with tempfile.NamedTemporaryFile('r', suffix='.trace') as log:
        script = ''.join(f'ip xfrm {quote(s)} && ' for s in setup)
        script += (
            f'strace -qq -e trace=sendmsg,sendto,recvmsg -e write=all -e read=all'
            f' -o {log.name} ip xfrm {quote(args)}'
        )
        subprocess.run(['unshare', '-n', 'sh', '-c', script], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return buffers(log.read(), syscalls)


def quote(args: str) -> str:
    return ' '.join(shlex.quote(a) for a in args.split())


def xfrm_messages(bufs: list[bytes]) -> list[bytes]:
    """Keep XFRM messages (types 0x10..0x28); drop any other netlink chatter of ip."""
    return [b for b in bufs if 0x10 <= struct.unpack_from('H', b, 4)[0] <= 0x28]


def main() -> None:
    if '--vm' in sys.argv:
        capture_replies(VM_REPLIES)
        return
    for case in CASES:
        sent = xfrm_messages(strace_ip(case.setup, case.ip, ('sendmsg(', 'sendto(')))
        assert len(sent) == 1, (case.name, len(sent))
        (GOLDEN / f'{case.name}.bin').write_bytes(normalize(sent[0]))
        print(f'{case.name}: {len(sent[0])} bytes')
    capture_replies(REPLIES)


def capture_replies(replies: dict[str, tuple[list[str], str]]) -> None:
    for name, (setup, args) in replies.items():
        got = b''.join(strace_ip(setup, args, ('recvmsg(',)))
        (GOLDEN / f'{name}.reply.bin').write_bytes(got)
        print(f'{name}: {len(got)} bytes of replies')


if __name__ == '__main__':
    main()

"""We test that the IKE sockets get a receive buffer sized for a burst of peer answers."""

import socket

from kube_ipsec.agent import ikesocket


async def test_ike_sockets_have_a_large_receive_buffer():
    endpoint = ikesocket.IkeEndpoint("127.0.0.1", lambda *a: None, ike_port=0, natt_port=0,
                                     socket_bypass=False)
    sock = endpoint._socket(0, encap=False)
    try:
        # the kernel reports twice the requested size (bookkeeping overhead)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= ikesocket.RECEIVE_BUFFER
    finally:
        sock.close()

"""One task per IKE exchange, as in strongSwan's charon (``sa/ikev2/tasks/``).

A task is built with its role. The initiator calls ``build_i`` to fill a request and
``process_i`` on the response; the responder calls ``process_r`` on the request and ``build_r``
to fill the response. The task manager (``manager.py``) runs one of our tasks at a time.
"""

"""``pushy edge``: a process that holds node sockets for a coordinator (``pushy server``).

Started by the server itself (``--local``: it shares the server's node ports through
SO_REUSEPORT and exits when its parent does), or on another host with ``--coordinator`` and
the credentials ``pushy edge-key`` wrote. See ``appliance.edge.process``.
"""

"""The operator CLI: ``pushy job``, ``pushy node``, ``pushy admin`` and ``pushy watch``.

It drives the server the way knife-push drives the original (same request bodies, messages
and exit codes), reads knife's own configuration, and follows jobs through the server's event
feeds instead of polling.
"""

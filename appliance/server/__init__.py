"""Server shells: trio tasks that own sockets and timers and feed the pure core."""

"""Pure core: no sockets, no clocks, no files. Never imports a shell."""

"""Several worker processes on one machine (`[server] workers = N`, N > 1).

twistd stays the one process systemd manages; it becomes a supervisor that
binds every listener (before it drops privileges) and runs N workers, each a
full node (store, queue runner, maintenance, all listeners) on the sockets it
hands them. See docs/workers.md.

- sockets.py: the listening sockets, one SO_REUSEPORT socket per listener
  and worker, so the kernel spreads connections evenly.
- supervisor.py: starting, restarting and draining the workers.
- channel.py: the pipe pair between supervisor and worker, which carries
  mailbox change notices on SQLite and tells a worker its supervisor died.
- worker.py: a worker's entry point (`python -m exmaild.workers.worker`).
"""

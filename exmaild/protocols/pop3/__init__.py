"""POP3 (RFC 1939 and extensions): `server.POP3Factory` is what the daemon listens with."""

"""exmaild: a self-hosted enterprise mail server (SMTP, IMAP4, POP3) on Twisted."""

__version__ = "0.1.0"

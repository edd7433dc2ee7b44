"""Spam filtering on the MX: rspamd over its HTTP protocol, a DNSBL check,
and rspamd training from IMAP moves (docs/mail-auth.md)."""

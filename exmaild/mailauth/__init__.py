"""Mail authentication: DKIM signing of outbound mail, and SPF, DKIM, DMARC
and reverse-DNS checks of mail arriving on the MX (see
docs/mail-auth.md)."""

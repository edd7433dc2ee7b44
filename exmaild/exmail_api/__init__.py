"""Exmail's open API (api.exmail.qq.com/cgi-bin/...) answered by exmaild, so
a company's existing integrations move by a host-name change
(docs/exmail-api.md). Directory calls go through exmaild.directory's service,
like /api/v1 and exmailctl."""

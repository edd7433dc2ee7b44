"""Wire codecs shared by several layers (protocol servers, the outbound queue)."""

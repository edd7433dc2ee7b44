"""The enterprise directory's rules: enterprises, domains, departments,
members, aliases, admin roles, API tokens and the operation log.

The one place with those rules: `exmailctl` and the admin HTTP API both call
`DirectoryService` and turn its typed errors into a line or a JSON error.
"""

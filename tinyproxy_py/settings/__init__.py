"""What the operator decides: the Config, its file and environment forms, upstream rules,
and the policy (ACL, credentials, ports, destinations). Pure: no sockets.

May import: errors, wire, observe.
"""

"""The demo service: a central configuration store, one instance per region.

It is the reference for how a service cooperates with xregion's last-writer-wins: it keeps
the `Xr-Hlc` (and `Xr-Event-Id`) of each write as the record's version and answers 409 to a
write older than the version it holds, deletes included (tombstones). Its `/items`
collection (client-assigned ids; create, patch, delete) is the reference for `apply` writes:
a patch merges fields and is never refused for its order.
"""

"""Who is who: CurveZMQ key pairs, client Ed25519 identities, allowlists and their key files.

- :mod:`.keys`: key types (:class:`~.keys.CurveKeyPair`, :class:`~.keys.ClientKeys`,
  :class:`~.keys.Allowlist`);
- :mod:`.keyfiles`: reading and writing them (secrets mode 0600, folders 0700).

Below the runtime: uses only :mod:`secagg.fl_core.errors` and the primitives.
"""

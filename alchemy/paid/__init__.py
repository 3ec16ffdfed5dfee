"""Paid work done once: every provider call is paid at most once per piece of work.

A *piece* is what one call (or a structured reply's two: the first and its repair) pays
for, named by a *work key*: ``content:<content_queue id>``, ``research:<idea id>:<type>``,
``media:<job id>`` (the media row). For each piece:

- :mod:`alchemy.paid.leases`: before any call a runner claims the piece's lease in
  PostgreSQL (one statement, PostgreSQL's clock), with an owner token of the job id, the
  attempt and the runner (identity, incarnation, run). A live lease held by another owner
  defers the job (no attempt spent); an expired one, or one whose owner is known dead, is
  taken over. The result's transaction commits only while the same owner holds the lease
  (fenced), and releases it.
- :mod:`alchemy.paid.ledger`: one ``provider_calls`` row per request, written *before* it
  is sent (``in_flight``, its id sent as the ``X-Alchemy-Call`` header) and completed after
  the reply with the request id, usage, cost (:mod:`alchemy.providers.prices`) and the
  reply itself, kept until a committed result consumes it: a retry after a failure that
  came after the paid call reuses the reply instead of paying again.
  :mod:`alchemy.paid.stash` keeps a paid reply in Redis when PostgreSQL is away.
- :mod:`alchemy.paid.piece`: what a handler uses: ``async with work.piece(job, key) as
  piece``, ``piece.text(provider)``, ``piece.image(...)``, ``async with piece.commit()``;
  :mod:`alchemy.paid.calls`: one call of a piece (a stored reply, or a ledgered call).
- :mod:`alchemy.paid.spend`: totals from the ledger, for ``alchemy spend``.

Nothing here imports :mod:`alchemy.ops` or :mod:`alchemy.worker`: what operators watch is
reported through a :class:`~alchemy.paid.observe.PaidObserver` set at assembly.
"""

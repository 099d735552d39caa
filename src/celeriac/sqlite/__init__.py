"""SQLite: the embedded broker and result store, and what they share.

``url`` parses ``sqlite://`` URLs; ``busy`` is the one busy policy of every
connection; ``polling`` paces the looks of idle consumers and result waiters;
``schema`` holds the broker's tables and statements; ``connection`` its
connection threads, group commit and shared publishing connections;
``consumer`` and ``broker`` are the broker, ``operations`` its operations plane
(events, the mailbox, revokes), ``beat`` beat's lease and last runs, ``store``
the result store.
Nothing is imported here, so ``celeriac.sqlite.url`` costs no sqlite3 import.
"""

"""``matchenv status`` (also ``kubectl matchenv status``): one line per environment — phase, backlog, dead letters,
the newest match its workers stored and how far it is behind the most advanced environment of its feed."""

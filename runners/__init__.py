from runners import aid  # noqa: F401  (registers purifier 'aid' in runners.defended.PURIFIERS)

from runners import aid  # noqa: F401  (registers purifier 'aid' in runners.defended.PURIFIERS)
from runners import lm  # noqa: F401  (registers purifiers 'lm' and 'coup_lm' in runners.defended.PURIFIERS)

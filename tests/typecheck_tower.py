"""Runtime type checker for the test suite: beartype with the PEP 484 numeric tower (an int is a valid float)."""

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))

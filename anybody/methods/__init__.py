"""The papers' math, written once against :class:`anybody.host.Host`."""

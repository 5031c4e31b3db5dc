"""On-demand features: the plan of a request and the rules for calling functions, shared
by serving (:mod:`volga.serving`, the online store) and training (:mod:`volga.training`,
the offline store at spine times)."""

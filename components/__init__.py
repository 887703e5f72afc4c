"""KFP components: one folder per stage, each a thin ``@dsl.component`` over a shipyard stage function."""

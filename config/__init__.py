"""Settings files shipped with cohortflow: default.yaml (every setting, commented), demo.yaml
(`make demo`), fast.yaml (tests and UI checks). A package only so that they install with it."""

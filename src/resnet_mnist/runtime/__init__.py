"""The process floor every layer may use: signals and safe points, exit codes (ProjectError), the timeline."""

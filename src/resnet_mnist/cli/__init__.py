"""The command line: one module per verb group; each verb parses, calls one function below, prints."""

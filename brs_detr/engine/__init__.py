"""Training runtime: process groups for the tools."""

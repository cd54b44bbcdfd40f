"""Figures and the HTML report, drawn from run folders only."""

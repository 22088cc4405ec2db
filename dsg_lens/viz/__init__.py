"""Visualisation: offline circuitsvis token views, latent attributions and matplotlib paper figures."""

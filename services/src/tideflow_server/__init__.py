"""Tideflow server: frontend, history and matching roles and the persistence layer."""

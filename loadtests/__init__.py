"""Locust load tests, their runner and the report that compares frameworks."""

"""Sensors: new data in the data folder, and leaks that call for another attempt."""

from cohortflow_dagster.sensors.attempts import attempt_sensor
from cohortflow_dagster.sensors.data import data_sensor

__all__ = ["attempt_sensor", "data_sensor"]

"""Sensors: new data in the data folder, and leaks that call for another attempt."""

from sensors.attempts import attempt_sensor
from sensors.data import data_sensor

__all__ = ["attempt_sensor", "data_sensor"]

import asyncio
import json
import os

from aiokafka import AIOKafkaConsumer

AGENCY_ID = os.environ["REFNET_AGENCY_ID"]
MAX_OFFERS = int(os.environ.get("REFNET_MAX_OFFERS", "0"))  # 0: until interrupted


async def main() -> None:
    consumer = AIOKafkaConsumer(
        f"refnet.agency.{AGENCY_ID}.offers",
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        group_id=f"agency-{AGENCY_ID}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    offers = 0
    try:
        async for record in consumer:
            ce_type = dict(record.headers)["ce_type"].decode()
            print(ce_type, json.loads(record.value), flush=True)
            if ce_type == "org.refnet.referral.offered":
                offers += 1
                if offers == MAX_OFFERS:
                    break
    finally:
        await consumer.stop()


asyncio.run(main())

"""Word lists behind the synthetic tasks (data only; the generators live in synthetic.py).

Lists are space- or comma-separated strings split once, which keeps this file short and easy
to extend. Each list has no entry shared with another label's list, so a label is always
decidable from the input alone.
"""

from __future__ import annotations


def words(text: str) -> list[str]:
    return text.split()


def phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


# ---- sentiment: polarity lives only in the adjectives and the closing remark -----------------
REVIEW_ITEMS = words("pasta pizza soup burger salad steak dessert coffee curry sushi sandwich breakfast "
                     "service menu phone laptop headphones blender jacket backpack charger camera "
                     "keyboard vacuum kettle lamp watch printer")
POSITIVE_WORDS = words("excellent wonderful fantastic great lovely amazing superb perfect delightful "
                       "outstanding brilliant impressive")
NEGATIVE_WORDS = words("terrible awful horrible disappointing dreadful poor useless mediocre unpleasant "
                       "lousy frustrating pathetic")
POSITIVE_CLOSERS = phrases("Would recommend., Five stars., Very happy with it.")
NEGATIVE_CLOSERS = phrases("Would not recommend., One star., Very unhappy with it.")

# ---- geography: countries and cities that lie wholly in one continent -----------------------
CONTINENT_PLACES: dict[str, list[str]] = {
    "Africa": phrases(
        "Kenya, Nairobi, Nigeria, Abuja, Lagos, Ghana, Accra, Ethiopia, Addis Ababa, Senegal, Dakar, "
        "Morocco, Rabat, Marrakesh, Tanzania, Dar es Salaam, Uganda, Kampala, Zambia, Lusaka, Zimbabwe, "
        "Harare, Angola, Luanda, Mali, Bamako, Cameroon, Yaounde, Rwanda, Kigali, Madagascar, "
        "Antananarivo, Namibia, Windhoek, Botswana, Gaborone, Mozambique, Maputo, Tunisia, Tunis"),
    "Asia": phrases(
        "Japan, Tokyo, Osaka, China, Beijing, Shanghai, India, New Delhi, Mumbai, Thailand, Bangkok, "
        "Vietnam, Hanoi, Indonesia, Jakarta, Philippines, Manila, Malaysia, Kuala Lumpur, Nepal, "
        "Kathmandu, Pakistan, Islamabad, Bangladesh, Dhaka, South Korea, Seoul, Mongolia, Ulaanbaatar, "
        "Iran, Tehran, Saudi Arabia, Riyadh, Jordan, Amman, Cambodia, Phnom Penh, Laos, Vientiane, Tashkent"),
    "Europe": phrases(
        "France, Paris, Germany, Berlin, Munich, Italy, Rome, Milan, Spain, Madrid, Barcelona, Portugal, "
        "Lisbon, Poland, Warsaw, Sweden, Stockholm, Norway, Oslo, Finland, Helsinki, Denmark, Copenhagen, "
        "Austria, Vienna, Hungary, Budapest, Greece, Athens, Ireland, Dublin, Netherlands, Amsterdam, "
        "Belgium, Brussels, Czechia, Prague, Romania, Bucharest, Zagreb"),
    "North America": phrases(
        "Canada, Ottawa, Toronto, Vancouver, United States, Chicago, New York, Los Angeles, Mexico, "
        "Guadalajara, Cuba, Havana, Jamaica, Montego Bay, Honduras, Tegucigalpa, Nicaragua, Managua, "
        "Costa Rica, Haiti, Port-au-Prince, Dominican Republic, Santo Domingo, El Salvador, Bahamas, "
        "Nassau, Belize, Barbados"),
    "South America": phrases(
        "Brazil, Brasilia, Rio de Janeiro, Sao Paulo, Argentina, Buenos Aires, Chile, Santiago, Peru, "
        "Lima, Colombia, Bogota, Medellin, Venezuela, Caracas, Ecuador, Quito, Bolivia, La Paz, Paraguay, "
        "Asuncion, Uruguay, Montevideo, Guyana, Suriname"),
    "Oceania": phrases(
        "Australia, Canberra, Sydney, Melbourne, Brisbane, Adelaide, Gold Coast, New Zealand, Wellington, "
        "Auckland, Christchurch, Fiji, Suva, Papua New Guinea, Port Moresby, Samoa, Apia, Tonga, Vanuatu, "
        "Solomon Islands, Honiara"),
}
PLACE_TEMPLATES = phrases(
    "{p}, I am flying to {p} next week., My pen pal lives in {p}., We spent our holiday in {p}., "
    "The summit will be held in {p}., She was born in {p}.")

# ---- animal classes ---------------------------------------------------------------------------
ANIMALS: dict[str, list[str]] = {
    "mammal": words("dog cat horse cow elephant lion tiger whale dolphin bat rabbit bear wolf fox deer "
                    "giraffe zebra kangaroo monkey gorilla camel pig sheep goat squirrel otter hedgehog "
                    "mouse beaver panda"),
    "bird": words("eagle sparrow parrot penguin owl pigeon crow robin swan duck goose hawk falcon "
                  "flamingo ostrich peacock pelican seagull woodpecker hummingbird canary heron stork "
                  "toucan vulture"),
    "fish": words("salmon trout tuna shark cod goldfish carp catfish herring sardine mackerel halibut "
                  "swordfish clownfish piranha perch pike anchovy tilapia barracuda"),
    "reptile": words("snake lizard crocodile alligator turtle tortoise iguana gecko chameleon cobra "
                     "python viper rattlesnake anaconda skink tuatara caiman boa adder terrapin"),
}
ANIMAL_TEMPLATES = phrases(
    "{a}, The {a} was resting in the shade., Our guide pointed at the {a}., Kids love watching the {a}., "
    "A photo of the {a} won a prize., The {a} at the zoo looked hungry., We read a book about the {a}., "
    "The documentary followed one {a} for a year.")

# ---- news topics: each topic has its own vocabulary -------------------------------------------
SPORTS = {
    "team": phrases("the Lions, the Falcons, Real Madrid, the Yankees, Manchester United, the Lakers, "
                    "the Bulls, Juventus, the Patriots, Bayern Munich"),
    "comp": phrases("cup final, league opener, playoff game, derby, championship match, season finale"),
    "player": phrases("star striker, veteran goalkeeper, rookie quarterback, top seed, team captain"),
}
BUSINESS = {
    "company": phrases("Acme Corp, Globex, Initech, Umbrella Inc, Stark Industries, Wayne Enterprises, "
                       "Hooli, Vandelay Imports, Soylent Co, Tyrell Corp"),
    "move": words("rise fall surge slump"),
    "report": phrases("quarterly earnings, profit warning, sales figures, merger talks, dividend cut"),
}
SCIENCE = {
    "thing": phrases("fossil, exoplanet, enzyme, bacteria species, comet, gene, black hole, deep-sea coral, "
                     "neutrino signal, dinosaur bone"),
    "place": phrases("Antarctica, the Amazon, the Sahara, the Pacific Ocean, Mars, a distant galaxy"),
    "tool": phrases("telescope, microscope, particle collider, satellite, gene sequencer"),
}
POLITICS = {
    "official": phrases("the president, the prime minister, the senator, the governor, the mayor, "
                        "the opposition leader"),
    "policy": words("tax healthcare immigration climate education pension housing"),
    "body": phrases("Parliament, the Senate, Congress, the city council"),
}

# ---- unit conversion: (from unit, to unit, factor) --------------------------------------------
UNIT_PAIRS: list[tuple[str, str, int]] = [
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("liters", "milliliters", 1000), ("feet", "inches", 12), ("dollars", "cents", 100),
    ("years", "months", 12),
]
